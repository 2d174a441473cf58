"""Leases and recovery: one runner per execution, replicas that die, cancel across replicas.

A "killed" replica is stopped without letting go of its leases (`Replica.stop(release=False)`):
its engine stops mid-step and nothing more is written, which is what kill -9 leaves behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from opsconductor_executor.models import Execution

if TYPE_CHECKING:
    from conftest import Kit, World, WorldFactory


async def kill(world: World) -> None:
    await world.app.state.replica.stop(release=False)


async def stream_seqs(world: World, execution_id: str) -> list[int]:
    return [i["seq"] for i in await world.stream(execution_id)]


class TestOneRunner:
    async def test_two_replicas_racing_for_a_claim(self, make_world: WorldFactory,
                                                   kit: Kit) -> None:
        engine_a, engine_b = kit.ScriptedEngine(), kit.ScriptedEngine()
        async with make_world(engine=engine_a, replica_id="a", sweep_interval_s=60) as a, \
                make_world(engine=engine_b, replica_id="b", sweep_interval_s=60) as b:
            runner_a, runner_b = a.app.state.runner, b.app.state.runner
            for _ in range(5):
                runner_a.accepting = runner_b.accepting = False
                execution_id = uuid.UUID(await a.submit(a.request(["web1", "web2"])))
                runner_a.accepting = runner_b.accepting = True
                won = await asyncio.gather(runner_a.claim_and_run(execution_id),
                                           runner_b.claim_and_run(execution_id))
                assert sorted(won) == [False, True]
                assert (await a.wait_final(str(execution_id)))["status"] == "succeeded"
            assert len(engine_a.runs) + len(engine_b.runs) == 5
            assert len(engine_a.dispatched) + len(engine_b.dispatched) == 5 * 2 * 2


class TestRecovery:
    async def test_a_dead_replicas_execution_reaches_one_final_state(
            self, make_world: WorldFactory, kit: Kit) -> None:
        # "hung" sends step 2 and never hears back; the others wait for a slot (concurrency 1).
        engine_a = kit.ScriptedEngine(scripts={"hung": kit.Script(hang_at=1, hang_forever=True)})
        engine_b = kit.ScriptedEngine()
        async with make_world(engine=engine_a, replica_id="a", lease_s=1) as a:
            execution_id = await a.submit(a.request(["hung", "never1", "never2"], concurrency=1))
            await asyncio.wait_for(engine_a.hanging.wait(), 30)
            await kill(a)
            before = await stream_seqs(a, execution_id)
            async with make_world(engine=engine_b, replica_id="b", lease_s=1) as b:
                final = await b.wait_final(execution_id, timeout_s=10)
                targets = await b.targets_of(execution_id)
                seqs = await stream_seqs(b, execution_id)
                stream = await b.stream(execution_id)
        assert final["status"] == "interrupted"
        assert targets["hung"]["status"] == "interrupted"
        assert "step 2 (two)" in targets["hung"]["error"]
        assert (targets["never1"]["status"], targets["never2"]["status"]) == ("succeeded",
                                                                              "succeeded")
        # Only the targets that never started ran on b, from their first step.
        assert sorted((p.name, p.first_step) for p in engine_b.runs[0]) == [
            ("never1", 0), ("never2", 0)]
        assert ("hung", 1) not in engine_b.dispatched
        # One numbering over both replicas: no gap, no repeat.
        assert seqs == list(range(1, len(seqs) + 1)) and seqs[:len(before)] == before
        taken_over = [i for i in stream if i["event"] == "status"]
        assert taken_over[0]["data"]["taken_over_by"] == "b"
        assert [i["event"] for i in stream].count("finished") == 1

    async def test_an_idempotent_step_runs_again(self, make_world: WorldFactory,
                                                 kit: Kit) -> None:
        engine_a = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=1, hang_forever=True)})
        engine_b = kit.ScriptedEngine()
        async with make_world(engine=engine_a, replica_id="a", lease_s=1) as a:
            body = a.request(["web1"])
            body["steps"][1]["idempotent"] = True
            execution_id = await a.submit(body)
            await asyncio.wait_for(engine_a.hanging.wait(), 30)
            await kill(a)
            async with make_world(engine=engine_b, replica_id="b", lease_s=1) as b:
                final = await b.wait_final(execution_id, timeout_s=10)
        assert final["status"] == "succeeded"
        assert engine_a.dispatched == [("web1", 0), ("web1", 1)]
        assert engine_b.dispatched == [("web1", 1)]  # step 1 (done) is not repeated
        assert [(p.first_step, p.attempts_done) for p in engine_b.runs[0]] == [(1, 0)]

    async def test_a_restarted_replica_takes_its_own_back_at_once(
            self, make_world: WorldFactory, kit: Kit) -> None:
        engine_a = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0, hang_forever=True)})
        async with make_world(engine=engine_a, replica_id="stable-a", lease_s=600) as a:
            execution_id = await a.submit(a.request(["web1", "web2"], concurrency=1))
            await asyncio.wait_for(engine_a.hanging.wait(), 30)
            await kill(a)
        started = time.monotonic()
        async with make_world(engine=kit.ScriptedEngine(), replica_id="stable-a",
                              lease_s=600) as again:
            final = await again.wait_final(execution_id, timeout_s=10)
        assert time.monotonic() - started < 10  # not the 600 s lease
        assert final["status"] == "interrupted"
        assert final["counts"]["interrupted"] == 1 and final["counts"]["succeeded"] == 1

    async def test_a_clean_stop_hands_over_at_once(self, make_world: WorldFactory,
                                                   kit: Kit) -> None:
        engine_a = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0, hang_forever=True)})
        async with make_world(engine=engine_a, replica_id="a", lease_s=600) as a:
            execution_id = await a.submit(a.request(["web1", "web2"], concurrency=1))
            await asyncio.wait_for(engine_a.hanging.wait(), 30)
        started = time.monotonic()
        async with make_world(engine=kit.ScriptedEngine(), replica_id="b", lease_s=600) as b:
            final = await b.wait_final(execution_id, timeout_s=10)
        assert time.monotonic() - started < 10  # not the 600 s lease
        assert final["counts"]["interrupted"] == 1 and final["counts"]["succeeded"] == 1

    async def test_queued_work_is_found_by_the_sweep(self, make_world: WorldFactory,
                                                     kit: Kit) -> None:
        async with make_world(replica_id="a") as a:
            a.app.state.runner.accepting = False  # this replica dies before claiming
            execution_id = await a.submit(a.request())
            await kill(a)
            async with make_world(engine=kit.ScriptedEngine(), replica_id="b") as b:
                assert (await b.wait_final(execution_id, timeout_s=10))["status"] == "succeeded"

    async def test_past_the_job_timeout_nothing_is_started(self, make_world: WorldFactory,
                                                          kit: Kit) -> None:
        engine_a = kit.ScriptedEngine(scripts={"hung": kit.Script(hang_at=0, hang_forever=True)})
        async with make_world(engine=engine_a, replica_id="a", lease_s=1) as a:
            execution_id = await a.submit(a.request(["hung", "never"], concurrency=1,
                                                    timeout_s=1))
            await asyncio.wait_for(engine_a.hanging.wait(), 30)
            await kill(a)
            await asyncio.sleep(1.1)
            engine_b = kit.ScriptedEngine()
            async with make_world(engine=engine_b, replica_id="b", lease_s=1) as b:
                final = await b.wait_final(execution_id, timeout_s=10)
                targets = await b.targets_of(execution_id)
        assert engine_b.runs == []
        assert targets["never"]["status"] == "timed_out"
        assert targets["hung"]["status"] == "interrupted"
        assert final["status"] == "timed_out"


class TestCapacity:
    async def test_a_full_replica_leaves_work_queued_until_it_has_room(
            self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"slow": kit.Script(hang_at=0)})
        async with make_world(engine=engine, max_running_executions=1) as world:
            first = await world.submit(world.request(["slow"]))
            await asyncio.wait_for(engine.hanging.wait(), 30)
            second = await world.submit(world.request(["web1"]))
            await asyncio.sleep(0.5)
            assert (await world.execution(second))["status"] == "queued"
            await world.client.post(f"/executions/{first}/cancel", headers=world.auth())
            assert (await world.wait_final(second))["status"] == "succeeded"


class TestLeaseKept:
    async def test_a_live_replica_keeps_its_execution(self, make_world: WorldFactory,
                                                      kit: Kit) -> None:
        engine_a = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0)})
        engine_b = kit.ScriptedEngine()
        async with make_world(engine=engine_a, replica_id="a", lease_s=0.6) as a, \
                make_world(engine=engine_b, replica_id="b", lease_s=0.6) as b:
            execution_id = await a.submit(a.request(["web1"]))
            await asyncio.wait_for(engine_a.hanging.wait(), 30)
            await asyncio.sleep(2.0)  # several lease lengths; b sweeps every 0.2 s
            assert engine_b.runs == []
            assert a.app.state.runner.running_ids == [uuid.UUID(execution_id)]
            await b.client.post(f"/executions/{execution_id}/cancel", headers=b.auth())
            assert (await a.wait_final(execution_id))["status"] == "canceled"
        assert engine_b.runs == []


class TestLeaseLoss:
    async def test_a_replica_that_lost_its_lease_stops_writing(self, make_world: WorldFactory,
                                                               kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0, hang_forever=True)})
        async with make_world(engine=engine, replica_id="a", lease_s=0.6,
                              sweep_interval_s=60) as a:
            execution_id = await a.submit(a.request(["web1"]))
            await asyncio.wait_for(engine.hanging.wait(), 30)
            async with a.db.transaction() as session:
                await session.execute(update(Execution).where(
                    Execution.id == uuid.UUID(execution_id)).values(owner="thief"))
            deadline = time.monotonic() + 5
            while a.app.state.runner.running_ids and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert a.app.state.runner.running_ids == []
            row = await a.execution(execution_id)
            assert row["status"] == "running"  # the thief's to finish; a wrote no end
            assert "finished" not in [i["event"] for i in await a.stream(execution_id)]


class TestCancelAcrossReplicas:
    async def test_a_cancel_accepted_elsewhere_reaches_the_owner(
            self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0)})
        async with make_world(engine=engine, replica_id="a", cancel_poll_s=0.2) as a, \
                make_world(engine=kit.ScriptedEngine(), replica_id="b") as b:
            execution_id = await a.submit(a.request(["web1"]))
            await asyncio.wait_for(engine.hanging.wait(), 30)
            started = time.monotonic()
            response = await b.client.post(f"/executions/{execution_id}/cancel",
                                           headers=b.auth(["executions:cancel"]))
            assert response.status_code == 202 and response.json()["status"] == "running"
            final: dict[str, Any] = await a.wait_final(execution_id, timeout_s=10)
            # Within a few heartbeats (0.2 s here); generous for a loaded test machine.
            assert time.monotonic() - started < 5
            assert final["status"] == "canceled"
            assert "canceling" in [i["data"].get("status") for i in await a.stream(execution_id)
                                   if i["event"] == "status"]
