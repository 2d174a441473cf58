"""The whole service with the real engine against real OpenSSH servers (libs/testing sshd):
run request → claim → fan-out → stored output and results → final state; cancel mid-run; a
replica killed mid-run and another taking over; retry-failed; secrets masked and never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from opsconductor_contracts import topics
from opsconductor_testing.heap import settled_heap
from opsconductor_testing.sshd import (
    SshServer,
    eventually,
    free_port,
    loopback_addresses,
    process_ids_matching,
    unique_sleep,
)

if TYPE_CHECKING:
    from conftest import Kit, World, WorldFactory

SECRET = "Db-Password-Never-Shown-4411"
HOSTILE = "; touch /tmp/pwned-$(id -u) `id` \n'\"done"


@pytest.fixture
def servers(sshd_factory: Callable[..., SshServer]) -> Iterator[SshServer]:
    """One sshd listening on four loopback addresses (a target per address)."""
    yield sshd_factory(addresses=loopback_addresses(4))


def body_for(world: World, server: SshServer, names: list[str], steps: list[dict[str, Any]],
             addresses: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """A run request over `names`, target i at address i of `server` (known to fake targets)."""
    addresses = addresses or server.addresses
    targets = []
    for name, address in zip(names, addresses, strict=False):
        target_id = str(uuid.uuid4())
        world.targets.add(target_id, name=name, host=address, port=server.port,
                          username=server.user, credential_type="private_key", password=None,
                          private_key=server.client_private_key,
                          host_key=server.host_public_key,
                          host_key_fingerprint=server.host_key_fingerprint)
        targets.append({"target_id": target_id, "name": name, "protocol": "ssh"})
    return {"job_id": str(uuid.uuid4()), "job_name": "ssh-job", "job_version": 3,
            "requested_by": world.user_id, "steps": steps, "targets": targets, **options}


async def output_of(world: World, execution_id: str, target_id: str) -> str:
    response = await world.client.get(f"/executions/{execution_id}/output", headers=world.auth(),
                                      params={"target_id": target_id, "limit": 5000})
    return "".join(c["data"] for c in response.json()["items"] if c["stream"] == "stdout")


class TestRun:
    async def test_three_steps_mixed_outcomes(self, make_world: WorldFactory,
                                              servers: SshServer, tmp_path: Path) -> None:
        async with make_world(engine="real") as world:
            steps = [
                {"name": "who", "kind": "command", "command": "echo hello {{ who }}"},
                {"name": "check", "kind": "command",
                 "command": "set -- $SSH_CONNECTION; case $3 in 127.0.0.2) exit 3;; esac; "
                            "echo on-$3"},
                {"name": "script", "kind": "script", "script": "echo from-script\necho err >&2"},
            ]
            body = body_for(world, servers, ["a", "b", "c"], steps,
                            parameters=[{"name": "who", "type": "string"}],
                            values={"who": HOSTILE})
            # An address where nothing listens: the fourth target cannot be reached.
            body_dead = body_for(world, servers, ["dead"], steps, addresses=["127.0.0.9"])
            world.targets.credentials[body_dead["targets"][0]["target_id"]]["port"] = free_port()
            body["targets"] += body_dead["targets"]
            execution_id = await world.submit(body)
            final = await world.wait_final(execution_id, timeout_s=60)

            assert final["status"] == "failed"
            assert final["counts"] == {"total": 4, "succeeded": 2, "failed": 2, "running": 0,
                                            "pending": 0, "timed_out": 0, "canceled": 0,
                                            "interrupted": 0}
            targets = await world.targets_of(execution_id)
            assert (targets["a"]["status"], targets["a"]["exit_code"]) == ("succeeded", 0)
            assert (targets["b"]["status"], targets["b"]["exit_code"]) == ("failed", 3)
            assert targets["dead"]["status"] == "failed" and "connect" in targets["dead"]["error"]
            for name in ("a", "b", "c"):
                assert targets[name]["attempts"] == 1 and targets[name]["started_at"]

            ids = {t["name"]: t["target_id"] for t in body["targets"]}
            text_a = await output_of(world, execution_id, ids["a"])
            assert text_a == f"hello {HOSTILE}\non-127.0.0.1\nfrom-script\n"
            assert "on-" not in await output_of(world, execution_id, ids["b"])
            assert not list(Path("/tmp").glob("pwned-*"))

            stream = await world.stream(execution_id)
            assert [i["seq"] for i in stream] == list(range(1, len(stream) + 1))
            assert stream[0]["event"] == "started" and stream[-1]["event"] == "finished"
            assert any(i["event"] == "output" and i["data"]["stream"] == "stderr"
                       for i in stream)

            events = await world.events()
            finished = [e for e in events if e["type"] == topics.EXECUTION_FINISHED]
            assert len(finished) == 1 and finished[0]["data"]["status"] == "failed"
            live = [c["seq"] for e in events if e["type"] == topics.EXECUTION_OUTPUT
                    for c in e["data"]["chunks"]]
            stored = [i["seq"] for i in stream if i["event"] == "output"]
            assert sorted(live) == stored  # every stored chunk also went out live

    async def test_secrets_reach_the_target_masked_and_leave_no_trace(
            self, make_world: WorldFactory, sshd: SshServer, kit: Kit,
            tmp_path: Path) -> None:
        marker = tmp_path / "seen"
        async with make_world(engine="real") as world:
            steps = [{"name": "use", "kind": "command",
                      "command": f"printf %s {{{{ password }}}} > {marker}; "
                                 "echo pw={{ password }}; sleep 1; :"}]
            body = body_for(world, sshd, ["a"], steps,
                            parameters=[{"name": "password", "type": "secret"}],
                            secret_values={"password": SECRET})
            on_command_lines: list[int] = []

            async def watch_command_lines() -> None:  # every account on the target sees them
                while True:
                    on_command_lines.extend(process_ids_matching(SECRET))
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch_command_lines())
            execution_id = await world.submit(body)
            final = await world.wait_final(execution_id, timeout_s=60)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            assert final["status"] == "succeeded"
            assert on_command_lines == []
            assert marker.read_text() == SECRET  # the command got the real value
            text = await output_of(world, execution_id, body["targets"][0]["target_id"])
            assert text == "pw=****\n"
            kit.assert_absent(await world.database_dump(), SECRET)
            kit.assert_absent(await world.events(), SECRET)
            kit.assert_absent("\n".join(world.bodies), SECRET)


class TestCancel:
    async def test_cancel_stops_remote_commands(self, make_world: WorldFactory,
                                                servers: SshServer) -> None:
        pause = unique_sleep()
        async with make_world(engine="real") as world:
            steps = [{"name": "wait", "kind": "command", "command": f"sleep {pause}"},
                     {"name": "never", "kind": "command", "command": "echo never"}]
            body = body_for(world, servers, ["a", "b", "c", "d"], steps, concurrency=2)
            execution_id = await world.submit(body)
            assert await eventually(lambda: len(process_ids_matching(f"sleep {pause}")) == 2,
                                    timeout_s=30)
            started = time.monotonic()
            response = await world.client.post(f"/executions/{execution_id}/cancel",
                                               headers=world.auth(["executions:cancel"]))
            assert response.status_code == 202
            final = await world.wait_final(execution_id, timeout_s=10)
            assert time.monotonic() - started < 2.5
            assert final["status"] == "canceled"
            assert final["counts"]["canceled"] == 4
            assert await eventually(lambda: not process_ids_matching(f"sleep {pause}"),
                                    timeout_s=5)
            assert "never" not in "".join(
                i["data"].get("data", "") for i in await world.stream(execution_id))


class TestRecovery:
    async def test_killed_mid_run_then_another_replica(self, make_world: WorldFactory,
                                                       servers: SshServer,
                                                       tmp_path: Path) -> None:
        pause = unique_sleep()
        log = tmp_path / "log"
        async with make_world(engine="real", replica_id="a", lease_s=1) as a:
            steps = [{"name": "first", "kind": "command",
                      "command": f"set -- $SSH_CONNECTION; echo $3 >> {log}"},
                     {"name": "long", "kind": "command",
                      "command": f"test -f {tmp_path}/go || sleep {pause}"}]
            body = body_for(a, servers, ["a", "b", "c"], steps, concurrency=1)
            execution_id = await a.submit(body)
            assert await eventually(lambda: bool(process_ids_matching(f"sleep {pause}")),
                                    timeout_s=30)
            await a.app.state.replica.stop(release=False)  # dies holding the lease
            (tmp_path / "go").write_text("")
            async with make_world(engine="real", replica_id="b", lease_s=1) as b:
                final = await b.wait_final(execution_id, timeout_s=60)
                targets = await b.targets_of(execution_id)
                stream = await b.stream(execution_id)
        # "a" may have run its long step: not run again. "b" and "c" never started: they ran.
        assert targets["a"]["status"] == "interrupted"
        assert "step 2 (long)" in targets["a"]["error"]
        assert (targets["b"]["status"], targets["c"]["status"]) == ("succeeded", "succeeded")
        assert final["status"] == "interrupted"
        assert sorted(log.read_text().split()) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        assert [i["seq"] for i in stream] == list(range(1, len(stream) + 1))
        assert [i["event"] for i in stream].count("finished") == 1

    async def test_idempotent_step_reruns_on_takeover(self, make_world: WorldFactory,
                                                      sshd: SshServer, tmp_path: Path) -> None:
        counter = tmp_path / "runs"
        pause = unique_sleep()
        async with make_world(engine="real", replica_id="a", lease_s=1) as a:
            steps = [{"name": "count", "kind": "command", "command": f"echo x >> {counter}"},
                     {"name": "wait", "kind": "command", "idempotent": True,
                      "command": f"test -f {tmp_path}/go || sleep {pause}"}]
            body = body_for(a, sshd, ["a"], steps)
            execution_id = await a.submit(body)
            assert await eventually(lambda: bool(process_ids_matching(f"sleep {pause}")),
                                    timeout_s=30)
            await a.app.state.replica.stop(release=False)
            (tmp_path / "go").write_text("")
            async with make_world(engine="real", replica_id="b", lease_s=1) as b:
                final = await b.wait_final(execution_id, timeout_s=60)
                text = await output_of(b, execution_id, body["targets"][0]["target_id"])
        assert final["status"] == "succeeded"
        assert counter.read_text() == "x\n"  # the first step (not idempotent, done) ran once
        assert text == ""


class TestRetryFailed:
    async def test_only_the_failed_target_runs_again(self, make_world: WorldFactory,
                                                     servers: SshServer, tmp_path: Path) -> None:
        ready = tmp_path / "ready"
        log = tmp_path / "log"
        async with make_world(engine="real") as world:
            steps = [{"name": "work", "kind": "command",
                      "command": f"set -- $SSH_CONNECTION; echo $3 >> {log}; "
                                 f"[ $3 = 127.0.0.1 ] || test -f {ready}"}]
            body = body_for(world, servers, ["a", "b"], steps)
            first = await world.submit(body)
            assert (await world.wait_final(first, timeout_s=60))["status"] == "failed"
            ready.write_text("")
            response = await world.client.post(f"/executions/{first}/retry-failed",
                                               headers=world.auth(["jobs:run"]))
            assert response.status_code == 202
            retry = response.json()["execution_id"]
            final = await world.wait_final(retry, timeout_s=60)
        assert final["status"] == "succeeded" and final["retry_of"] == first
        assert final["counts"]["total"] == 1
        assert sorted(log.read_text().split()) == ["127.0.0.1", "127.0.0.2", "127.0.0.2"]


async def test_fan_out_over_many_targets(make_world: WorldFactory,
                                         sshd_factory: Callable[..., SshServer]) -> None:
    """Twenty targets, concurrency 8: every target's result and output stored, in order."""
    server = sshd_factory(addresses=loopback_addresses(20))
    async with make_world(engine="real") as world:
        body = body_for(world, server, [f"t{i:02}" for i in range(20)],
                        [{"name": "one", "kind": "command", "command": "echo one"},
                         {"name": "two", "kind": "command", "command": "echo two"}],
                        concurrency=8)
        execution_id = await world.submit(body)
        final = await world.wait_final(execution_id, timeout_s=120)
        assert final["status"] == "succeeded" and final["counts"]["succeeded"] == 20
        for target in body["targets"]:
            assert await output_of(world, execution_id, target["target_id"]) == "one\ntwo\n"


async def test_five_hundred_targets_canceled_within_two_seconds(
        make_world: WorldFactory, sshd_factory: Callable[..., SshServer]) -> None:
    """Through the API: 200 commands running, 300 targets waiting; the cancel request to the
    execution's final state `canceled`, every target's end stored, in under two seconds."""
    server = sshd_factory(addresses=loopback_addresses(200))
    pause = unique_sleep()
    # The owner hears this cancel on the fast path: no need for quick heartbeats (less load).
    async with make_world(engine="real", connect_timeout_s=90, cancel_poll_s=0.5,
                          sweep_interval_s=5) as world:
        names = [f"t{i:03}" for i in range(500)]
        addresses = [server.addresses[i % 200] for i in range(500)]
        body = body_for(world, server, names, [
            {"name": "wait", "kind": "command", "command": f"sleep {pause}"}],
            addresses=addresses, concurrency=200)
        execution_id = await world.submit(body)
        assert await eventually(lambda: len(process_ids_matching(f"sleep {pause}")) >= 200,
                                timeout_s=120)
        # The client's token and the service's first key fetch are one-time costs, not the
        # cancel's: both happen before the clock starts; so does sparing the clock a full
        # collection of the test process's heap.
        cancel_headers = world.auth(["executions:cancel"])
        assert (await world.execution(execution_id))["status"] == "running"
        with settled_heap():
            started = time.monotonic()
            response = await world.client.post(f"/executions/{execution_id}/cancel",
                                               headers=cancel_headers)
            assert response.status_code == 202
            final = await world.wait_final(execution_id, timeout_s=30)
            elapsed = time.monotonic() - started
        assert final["status"] == "canceled", final
        assert final["counts"]["canceled"] == 500
        assert elapsed < 2.0, elapsed
        assert await eventually(lambda: not process_ids_matching(f"sleep {pause}"), timeout_s=15)
