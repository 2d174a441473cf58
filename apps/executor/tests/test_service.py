"""Runs through the service with a scripted engine: outcomes, cancel, retry-failed, events.

(The same paths run against a real OpenSSH server with the real engine in test_runs_ssh.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from opsconductor_contracts import topics
from opsconductor_contracts.events import (
    ExecutionCancelRequested,
    ExecutionFinished,
    ExecutionOutput,
    ExecutionRequested,
    ExecutionStarted,
    ExecutionTargetFinished,
)

if TYPE_CHECKING:
    from conftest import Kit, World, WorldFactory

PAYLOADS: dict[str, Any] = {
    topics.EXECUTION_REQUESTED: ExecutionRequested, topics.EXECUTION_STARTED: ExecutionStarted,
    topics.EXECUTION_OUTPUT: ExecutionOutput,
    topics.EXECUTION_TARGET_FINISHED: ExecutionTargetFinished,
    topics.EXECUTION_CANCEL_REQUESTED: ExecutionCancelRequested,
    topics.EXECUTION_FINISHED: ExecutionFinished}


def is_problem(response: Any, status: int) -> bool:
    return response.status_code == status and response.json()["status"] == status


class TestOutcomes:
    async def test_mixed_outcomes_fail_the_execution(self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"bad": kit.Script(exit_codes=[0, 3])})
        async with make_world(engine=engine) as world:
            execution_id = await world.submit(world.request(["good", "bad"]))
            final = await world.wait_final(execution_id)
            assert final["status"] == "failed"
            assert (final["counts"]["succeeded"], final["counts"]["failed"]) == (1, 1)
            targets = await world.targets_of(execution_id)
            assert (targets["bad"]["status"], targets["bad"]["exit_code"]) == ("failed", 3)
            assert targets["good"]["status"] == "succeeded"

    async def test_continue_on_error_goes_on(self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"web1": kit.Script(exit_codes=[5, 0])})
        async with make_world(engine=engine) as world:
            body = world.request(["web1"])
            body["steps"][0]["continue_on_error"] = True
            await world.wait_final(await world.submit(body))
            assert engine.dispatched == [("web1", 0), ("web1", 1)]

    async def test_credentials_are_fetched_for_the_run(self, world: World) -> None:
        body = world.request(["web1", "web2"])
        await world.wait_final(await world.submit(body))
        wanted = sorted(t["target_id"] for t in body["targets"])
        assert sorted(world.targets.calls) == wanted
        assert sorted(world.engine.credentials_seen) == wanted

    async def test_default_and_capped_concurrency(self, make_world: WorldFactory, kit: Kit) -> None:
        async with make_world(default_concurrency=7, max_concurrency=20) as world:
            unset = await world.submit(world.request())
            too_many = await world.submit(world.request(concurrency=500))
            for execution_id in (unset, too_many):
                await world.wait_final(execution_id)
        runs = {len(r) for r in world.engine.runs}
        assert runs == {1}
        # The snapshot stored with each execution is what the engine was given.
        async with make_world() as again:
            from opsconductor_executor.models import Execution

            async with again.db.transaction() as session:
                specs = {str(e.id): e.spec for e in
                         [await session.get(Execution, uuid.UUID(unset)),
                          await session.get(Execution, uuid.UUID(too_many))] if e}
            assert '"concurrency":7' in specs[unset]
            assert '"concurrency":20' in specs[too_many]


class TestFailures:
    async def test_an_engine_error_ends_the_run_failed(self, make_world: WorldFactory,
                                                       kit: Kit) -> None:
        class Broken(kit.ScriptedEngine):
            async def run(self, *args: Any) -> None:
                raise RuntimeError("boom")

        async with make_world(engine=Broken()) as world:
            execution_id = await world.submit(world.request(["web1", "web2"]))
            final = await world.wait_final(execution_id)
            assert final["status"] == "failed"
            assert "Executor error (RuntimeError)" in final["error"]
            targets = await world.targets_of(execution_id)
            assert {t["status"] for t in targets.values()} == {"failed"}

    async def test_secret_values_that_cannot_be_opened_fail_the_run(
            self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine()
        async with make_world(replica_id="a") as a:
            a.app.state.runner.accepting = False  # created here, claimed elsewhere
            body = a.request(["web1"], parameters=[{"name": "token", "type": "secret"}],
                             secret_values={"token": "Value-Sealed-Under-Old-Key-1"})
            execution_id = await a.submit(body)
            await a.app.state.replica.stop(release=True)
        a.runtime.secrets.clear()  # the key is gone from the secret store
        async with make_world(engine=engine, replica_id="b") as b:
            final = await b.wait_final(execution_id)
        assert final["status"] == "failed"
        assert "secret parameter values" in final["error"]
        assert engine.runs == []


class TestEvents:
    async def test_a_run_in_events(self, world: World) -> None:
        headers = {**world.caller(), "X-Correlation-ID": "corr-run-1"}
        response = await world.client.post("/internal/executions",
                                           json=world.request(["web1", "web2"]), headers=headers)
        execution_id = response.json()["execution_id"]
        await world.wait_final(execution_id)
        events = await world.events()
        status_events = [e["type"] for e in events if e["type"] != topics.EXECUTION_OUTPUT]
        assert status_events == [topics.EXECUTION_REQUESTED, topics.EXECUTION_STARTED,
                                 topics.EXECUTION_TARGET_FINISHED,
                                 topics.EXECUTION_TARGET_FINISHED, topics.EXECUTION_FINISHED]
        for event in events:
            assert event["source"] == "executor"
            assert (event["resourcetype"], event["resourceid"]) == ("execution", execution_id)
            assert event["actor"] == world.user_id
            data = PAYLOADS[event["type"]].model_validate(event["data"])
            assert data.execution_id == execution_id
        assert events[0]["correlationid"] == "corr-run-1"
        # One output event per engine output call, its chunks numbered like the stored stream.
        stored = {i["seq"]: i for i in await world.stream(execution_id)}
        chunks = [c for e in events if e["type"] == topics.EXECUTION_OUTPUT
                  for c in e["data"]["chunks"]]
        assert len(chunks) == 4
        for chunk in chunks:
            assert stored[chunk["seq"]]["event"] == "output"
            assert stored[chunk["seq"]]["data"]["data"] == chunk["data"]
        finished = next(e for e in events if e["type"] == topics.EXECUTION_FINISHED)
        assert finished["data"]["seq"] == max(stored)
        assert finished["data"]["counts"]["succeeded"] == 2

    async def test_a_broker_outage_loses_live_output_only(self, world: World) -> None:
        world.runtime.fail_publish = True
        execution_id = await world.submit(world.request())
        assert (await world.wait_final(execution_id))["status"] == "succeeded"
        await world.app.state.runner.live.drain()
        assert [i["event"] for i in await world.stream(execution_id)].count("output") == 2
        world.runtime.fail_publish = False
        topics_now = [e["type"] for e in await world.events()]
        assert topics.EXECUTION_OUTPUT not in topics_now  # best-effort: gone, healed from storage
        assert topics.EXECUTION_FINISHED in topics_now  # the outbox kept the rest


class TestCancel:
    async def test_cancel_a_running_execution(self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"slow": kit.Script(hang_at=0)})
        async with make_world(engine=engine) as world:
            execution_id = await world.submit(world.request(["fast", "slow"]))
            await asyncio.wait_for(engine.hanging.wait(), 30)
            response = await world.client.post(f"/executions/{execution_id}/cancel",
                                                headers=world.auth(["executions:cancel"]))
            assert response.status_code == 202
            final = await world.wait_final(execution_id, timeout_s=5)
            assert final["status"] == "canceled" and final["cancel_requested"] is True
            targets = await world.targets_of(execution_id)
            assert targets["slow"]["status"] == "canceled"
            assert targets["fast"]["status"] == "succeeded"
            again = await world.client.post(f"/executions/{execution_id}/cancel",
                                             headers=world.auth())
            assert is_problem(again, 409)
            events = [e["type"] for e in await world.events()]
            assert events.count(topics.EXECUTION_CANCEL_REQUESTED) == 1
            assert "canceling" in [i["data"].get("status") for i in await world.stream(execution_id)
                                   if i["event"] == "status"]

    async def test_cancel_before_anyone_claimed_ends_it_at_once(self, world: World) -> None:
        world.app.state.runner.accepting = False  # nobody claims
        execution_id = await world.submit(world.request(["web1", "web2"]))
        response = await world.client.post(f"/executions/{execution_id}/cancel",
                                           headers=world.auth())
        assert response.status_code == 202 and response.json()["status"] == "canceled"
        final = await world.execution(execution_id)
        assert final["status"] == "canceled"
        assert final["counts"]["canceled"] == 2
        assert world.engine.runs == []
        stream = await world.stream(execution_id)
        assert [i["event"] for i in stream] == ["target_finished", "target_finished", "finished"]

    async def test_cancel_errors(self, world: World) -> None:
        response = await world.client.post(f"/executions/{uuid.uuid4()}/cancel",
                                           headers=world.auth())
        assert is_problem(response, 404)


class TestRetryFailed:
    async def test_only_failed_targets_run_again(self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"bad": kit.Script(exit_codes=[0, 3]),
                                         "worse": kit.Script(exit_codes=[1])})
        async with make_world(engine=engine) as world:
            first = await world.submit(world.request(["good", "bad", "worse"]))
            assert (await world.wait_final(first))["status"] == "failed"
            engine.scripts.clear()
            response = await world.client.post(f"/executions/{first}/retry-failed",
                                               headers=world.auth(["jobs:run"]))
            assert response.status_code == 202
            retry = response.json()["execution_id"]
            final = await world.wait_final(retry)
            assert final["status"] == "succeeded" and final["retry_of"] == first
            assert sorted(await world.targets_of(retry)) == ["bad", "worse"]
            assert [sorted(p.name for p in run) for run in engine.runs] == [
                ["bad", "good", "worse"], ["bad", "worse"]]

    async def test_refusals(self, make_world: WorldFactory, kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"slow": kit.Script(hang_at=0)})
        async with make_world(engine=engine) as world:
            running = await world.submit(world.request(["slow"]))
            await asyncio.wait_for(engine.hanging.wait(), 30)
            response = await world.client.post(f"/executions/{running}/retry-failed",
                                               headers=world.auth())
            assert is_problem(response, 409)  # not finished
            await world.client.post(f"/executions/{running}/cancel", headers=world.auth())
            await world.wait_final(running)
            response = await world.client.post(f"/executions/{running}/retry-failed",
                                               headers=world.auth())
            assert is_problem(response, 409)  # canceled targets are not "failed"
            fine = await world.submit(world.request(["web1"]))
            await world.wait_final(fine)
            response = await world.client.post(f"/executions/{fine}/retry-failed",
                                               headers=world.auth())
            assert is_problem(response, 409)  # nothing failed
            response = await world.client.post(f"/executions/{uuid.uuid4()}/retry-failed",
                                               headers=world.auth())
            assert is_problem(response, 404)
            response = await world.client.post(f"/executions/{fine}/retry-failed",
                                               headers=world.auth(), json={"bogus": 1})
            assert is_problem(response, 422)

    @pytest.mark.parametrize(("given", "status", "field"), [
        (None, 422, "parameters.token"),
        ({"token": 5}, 422, "parameters.token"),
        ({"token": "New-Secret-Value-77", "region": "eu"}, 422, "parameters.region"),
        ({"token": "New-Secret-Value-77"}, 202, None),
    ])
    async def test_secret_values_must_be_given_again(self, make_world: WorldFactory, kit: Kit,
                                                     given: dict[str, Any] | None, status: int,
                                                     field: str | None) -> None:
        engine = kit.ScriptedEngine(scripts={"web1": kit.Script(exit_codes=[1], echo_values=True)})
        async with make_world(engine=engine) as world:
            body = world.request(["web1"], parameters=[
                {"name": "token", "type": "secret", "required": True},
                {"name": "region", "type": "string"}],
                values={"region": "us"}, secret_values={"token": "First-Secret-Value-11"})
            body["steps"][0]["command"] = "echo {{ token }} {{ region }}"
            first = await world.submit(body)
            await world.wait_final(first)
            engine.scripts.clear()
            kwargs = {} if given is None else {"json": {"parameters": given}}
            response = await world.client.post(f"/executions/{first}/retry-failed",
                                               headers=world.auth(), **kwargs)
            assert response.status_code == status, response.text
            if field is not None:
                assert field in response.json()["errors"]
                assert "First-Secret-Value-11" not in response.text
                return
            retry = response.json()["execution_id"]
            await world.wait_final(retry)
            rows = await kit.target_rows(world.db, retry)
            assert rows["web1"].status == "succeeded"
