"""Cancel: a large fan-out over real OpenSSH servers stops within 2 s, remote commands are gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

from opsconductor_connectors import SshPool
from opsconductor_contracts.clients.targets import TargetCredential
from opsconductor_contracts.jobspec import RunRequest, RunTarget, StepSpec
from opsconductor_executor.engine import Engine, EngineChunk, EngineSettings, TargetOutcome, TargetPlan
from opsconductor_testing.heap import settled_heap
from opsconductor_testing.sshd import SshServer, eventually, loopback_addresses, unique_sleep


class Recorder:
    """EngineHooks and CredentialSource: the engine's real boundary, recorded."""

    def __init__(self, credentials: dict[str, TargetCredential]) -> None:
        self.credentials = credentials
        self.started: set[str] = set()
        self.dispatched: set[str] = set()
        self.outcomes: dict[str, TargetOutcome] = {}
        self.fetched = 0

    async def get(self, target_id: str) -> TargetCredential | None:
        self.fetched += 1
        return self.credentials.get(target_id)

    async def target_started(self, target_id: str, attempt: int) -> None:
        self.started.add(target_id)

    async def step_dispatched(self, target_id: str, step_index: int) -> None:
        self.dispatched.add(target_id)

    async def step_finished(self, target_id: str, step_index: int, exit_code: int | None) -> None:
        pass

    async def output(self, chunks: list[EngineChunk]) -> None:
        pass

    async def target_finished(self, target_id: str, outcome: TargetOutcome) -> None:
        assert target_id not in self.outcomes
        self.outcomes[target_id] = outcome


def sleeping(duration: str) -> int:
    """`sleep <duration>` processes on this machine (the test servers' commands)."""
    wanted = f"sleep\0{duration}\0".encode()
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes() == wanted:
                count += 1
    return count


def setup(
    server: SshServer,
    addresses: list[str],
    count: int,
    command: str,
    concurrency: int,
    password_login: tuple[str, str] | None = None,
) -> tuple[RunRequest, list[TargetPlan], Recorder]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    user, password = password_login or (server.user, None)
    credentials = {
        tid: TargetCredential(
            target_id=tid,
            name=f"t{n}",
            host=addresses[n % len(addresses)],
            port=server.port,
            protocol="ssh",
            username=user,
            credential_type="password" if password else "private_key",
            password=password,
            private_key=None if password else server.client_private_key,
            version=1,
            host_key=server.host_public_key,
            host_key_fingerprint=server.host_key_fingerprint,
        )
        for n, tid in enumerate(ids)
    }
    run = RunRequest(
        job_id=str(uuid.uuid4()),
        job_name="cancel",
        job_version=1,
        requested_by="tester",
        steps=[
            StepSpec(name="wait", kind="command", command=command),
            StepSpec(name="never", kind="command", command="echo never"),
        ],
        targets=[RunTarget(target_id=tid, name=f"t{n}", protocol="ssh") for n, tid in enumerate(ids)],
        concurrency=concurrency,
    )
    plans = [TargetPlan(t.target_id, t.name, t.protocol) for t in run.targets]
    return run, plans, Recorder(credentials)


class TestCancel:
    async def test_five_hundred_targets_cancel_within_two_seconds(self, sshd_factory) -> None:  # type: ignore[no-untyped-def]
        addresses = loopback_addresses(200)
        server: SshServer = sshd_factory(addresses=addresses)
        duration = unique_sleep()
        run, plans, recorder = setup(server, addresses, 500, f"sleep {duration}", concurrency=200)
        engine = Engine(
            ssh_pool=SshPool(max_per_host=4),
            settings=EngineSettings(connect_timeout_s=90, cancel_grace_s=0.5),
        )
        cancel = asyncio.Event()
        task = asyncio.create_task(engine.run(run, plans, recorder, recorder, cancel))
        try:
            # 200 commands running on 200 hosts, 300 targets waiting for a slot.
            assert await eventually(lambda: sleeping(duration) == 200, timeout_s=90), sleeping(duration)
            assert len(recorder.dispatched) == 200

            with settled_heap():
                cancel.set()
                started = time.monotonic()
                await asyncio.wait_for(asyncio.shield(task), 10)
                elapsed = time.monotonic() - started

            assert elapsed < 2.0, elapsed
            assert len(recorder.outcomes) == 500
            assert {o.status for o in recorder.outcomes.values()} == {"canceled"}
            waiting = [tid for tid in recorder.outcomes if tid not in recorder.started]
            assert len(waiting) == 300
            assert all(recorder.outcomes[tid].attempts == 0 for tid in waiting)
            assert all(recorder.outcomes[tid].error == "canceled before it started" for tid in waiting)
            assert recorder.fetched == 200  # no credential fetched, nothing opened for the rest
            assert await eventually(lambda: sleeping(duration) == 0, timeout_s=10)
        finally:
            cancel.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await engine.close()

    async def test_cancel_before_start_connects_nowhere(self, sshd: SshServer) -> None:
        run, plans, recorder = setup(sshd, [sshd.host], 20, "true", concurrency=5)
        engine = Engine(ssh_pool=SshPool())
        cancel = asyncio.Event()
        cancel.set()
        try:
            await engine.run(run, plans, recorder, recorder, cancel)
        finally:
            await engine.close()
        assert {o.status for o in recorder.outcomes.values()} == {"canceled"}
        assert len(recorder.outcomes) == 20
        assert recorder.fetched == 0
        assert sshd.connections() == 0

    async def test_waiting_targets_end_while_a_running_command_is_stopped(self, sshd: SshServer) -> None:
        # The running command ignores TERM, so its stop takes a while; the targets waiting for
        # its slot have nothing to stop and end at once instead of after it.
        duration = unique_sleep()
        run, plans, recorder = setup(sshd, [sshd.host], 3, f"trap '' TERM; sleep {duration}",
                                     concurrency=1)
        engine = Engine(ssh_pool=SshPool(), settings=EngineSettings(cancel_grace_s=1.0))
        cancel = asyncio.Event()
        task = asyncio.create_task(engine.run(run, plans, recorder, recorder, cancel))
        try:
            assert await eventually(lambda: sleeping(duration) == 1, timeout_s=30)
            cancel.set()
            await asyncio.wait_for(asyncio.shield(task), 10)
        finally:
            cancel.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await engine.close()
        [running] = recorder.started
        assert list(recorder.outcomes)[-1] == running
        assert {o.status for o in recorder.outcomes.values()} == {"canceled"}
        assert await eventually(lambda: sleeping(duration) == 0, timeout_s=10)

    async def test_cancel_while_logging_in(self, sshd: SshServer) -> None:
        # A server that accepts TCP but never speaks SSH: the checkout hangs in the handshake.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        run, plans, recorder = setup(sshd, [sshd.host], 3, "true", concurrency=3)
        for credential in recorder.credentials.values():
            credential.port = port
        engine = Engine(ssh_pool=SshPool())
        cancel = asyncio.Event()
        try:
            task = asyncio.create_task(engine.run(run, plans, recorder, recorder, cancel))
            assert await eventually(lambda: recorder.fetched == 3)
            await asyncio.sleep(0.2)
            cancel.set()
            started = time.monotonic()
            await asyncio.wait_for(task, 5)
            assert time.monotonic() - started < 1.5
        finally:
            server.close()
            await engine.close()
        assert {o.status for o in recorder.outcomes.values()} == {"canceled"}
        assert not recorder.dispatched

    async def test_canceling_the_run_task_stops_the_remote_commands(self, sshd_factory) -> None:  # type: ignore[no-untyped-def]
        server: SshServer = sshd_factory()
        duration = unique_sleep()
        run, plans, recorder = setup(server, [server.host], 4, f"sleep {duration}", concurrency=4)
        engine = Engine(ssh_pool=SshPool())
        task = asyncio.create_task(engine.run(run, plans, recorder, recorder, asyncio.Event()))
        try:
            assert await eventually(lambda: sleeping(duration) == 4, timeout_s=30)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            assert task.cancelled()
        finally:
            await engine.close()
        assert await eventually(lambda: sleeping(duration) == 0, timeout_s=10)

    async def test_cancel_while_slow_login_shells_are_starting(self, sshd_factory) -> None:  # type: ignore[no-untyped-def]
        # Every session spends 3 s in its "profile" before it runs the command (root's ~/.bashrc
        # takes seconds when many logins start at once). Root sessions refuse SSH signals, so a
        # command canceled meanwhile can only be stopped once its shell reports its PID.
        addresses = loopback_addresses(4)
        server: SshServer = sshd_factory(
            addresses=addresses, extra_config=['ForceCommand sleep 3; eval "$SSH_ORIGINAL_COMMAND"']
        )
        duration = unique_sleep()
        run, plans, recorder = setup(server, addresses, 4, f"sleep {duration}", concurrency=4)
        engine = Engine(ssh_pool=SshPool())
        cancel = asyncio.Event()
        task = asyncio.create_task(engine.run(run, plans, recorder, recorder, cancel))
        try:
            assert await eventually(lambda: len(recorder.dispatched) == 4, timeout_s=30)
            await asyncio.sleep(0.5)  # started; their shells are still in the profile
            cancel.set()
            started = time.monotonic()
            await asyncio.wait_for(asyncio.shield(task), 10)
            assert time.monotonic() - started < 2.0
            assert {o.status for o in recorder.outcomes.values()} == {"canceled"}
            await asyncio.sleep(3)  # past the profile: the commands would run from here on
            assert await eventually(lambda: sleeping(duration) == 0, timeout_s=10), sleeping(duration)
        finally:
            cancel.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await engine.close()
