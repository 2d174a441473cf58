"""The engine against real OpenSSH servers (libs/testing sshd): steps, outcomes, parameters as
data, masking, the output cap, retries, continue-on-error, uploads, scripts.

`Recorder` is the engine's real boundary (EngineHooks + CredentialSource), recording each call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opsconductor_connectors import SshPool
from opsconductor_contracts.clients.targets import TargetCredential
from opsconductor_contracts.jobspec import RetrySpec, RunRequest, RunTarget, StepSpec
from opsconductor_executor.engine import (
    Engine,
    EngineChunk,
    EngineSettings,
    TargetOutcome,
    TargetPlan,
)
from opsconductor_executor.journal import LeaseLost
from opsconductor_executor.output import MASK
from opsconductor_testing.sshd import (
    SshServer,
    eventually,
    free_port,
    loopback_addresses,
    process_ids_matching,
    unique_sleep,
)


class Recorder:
    """EngineHooks and CredentialSource in one: every call, in order."""

    def __init__(self, credentials: dict[str, TargetCredential]) -> None:
        self.credentials = credentials
        self.events: list[tuple[Any, ...]] = []
        self.chunks: list[EngineChunk] = []
        self.outcomes: dict[str, TargetOutcome] = {}
        self.fetched: list[str] = []
        self.running = 0
        self.max_running = 0

    async def get(self, target_id: str) -> TargetCredential | None:
        self.fetched.append(target_id)
        return self.credentials.get(target_id)

    async def target_started(self, target_id: str, attempt: int) -> None:
        if attempt == 1 or ("started", target_id, attempt - 1) not in self.events:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.events.append(("started", target_id, attempt))

    async def step_dispatched(self, target_id: str, step_index: int) -> None:
        self.events.append(("dispatched", target_id, step_index))

    async def step_finished(self, target_id: str, step_index: int, exit_code: int | None) -> None:
        self.events.append(("step_finished", target_id, step_index, exit_code))

    async def output(self, chunks: list[EngineChunk]) -> None:
        self.chunks.extend(chunks)
        self.events.append(("output", len(chunks)))

    async def target_finished(self, target_id: str, outcome: TargetOutcome) -> None:
        assert target_id not in self.outcomes, "finished twice"
        if any(e[0] == "started" and e[1] == target_id for e in self.events):
            self.running -= 1
        self.outcomes[target_id] = outcome
        self.events.append(("finished", target_id))

    def text(self, target_id: str, stream: str = "stdout") -> str:
        return "".join(c.data for c in self.chunks if c.target_id == target_id and c.stream == stream)

    def of(self, target_id: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if len(e) > 1 and e[1] == target_id]

    def dispatched(self, target_id: str) -> list[int]:
        return [e[2] for e in self.of(target_id) if e[0] == "dispatched"]


def credential_for(
    server: SshServer,
    target_id: str,
    host: str | None = None,
    *,
    port: int | None = None,
    pinned: bool = True,
) -> TargetCredential:
    return TargetCredential(
        target_id=target_id,
        name=f"host-{target_id[:8]}",
        host=host or server.host,
        port=port or server.port,
        protocol="ssh",
        username=server.user,
        credential_type="private_key",
        private_key=server.client_private_key,
        version=1,
        host_key=server.host_public_key if pinned else None,
        host_key_fingerprint=server.host_key_fingerprint if pinned else None,
    )


def make_run(steps: list[dict[str, Any]], target_ids: list[str], **options: Any) -> RunRequest:
    return RunRequest(
        job_id=str(uuid.uuid4()),
        job_name="engine test",
        job_version=1,
        requested_by=str(uuid.uuid4()),
        steps=[StepSpec(**step) for step in steps],
        targets=[RunTarget(target_id=t, name=f"n-{t[:8]}", protocol="ssh") for t in target_ids],
        **options,
    )


def plans_of(run: RunRequest) -> list[TargetPlan]:
    return [TargetPlan(t.target_id, t.name, t.protocol) for t in run.targets]


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(ssh_pool=SshPool(max_per_host=8), settings=EngineSettings(cancel_grace_s=0.3))
    try:
        yield engine
    finally:
        await engine.close()


async def execute(
    engine: Engine, run: RunRequest, recorder: Recorder, cancel: asyncio.Event | None = None
) -> Recorder:
    await engine.run(run, plans_of(run), recorder, recorder, cancel or asyncio.Event())
    return recorder


async def one_target(
    engine: Engine, sshd: SshServer, steps: list[dict[str, Any]], **options: Any
) -> tuple[Recorder, str]:
    [target_id] = new_ids(1)
    recorder = Recorder({target_id: credential_for(sshd, target_id)})
    await execute(engine, make_run(steps, [target_id], **options), recorder)
    return recorder, target_id


class TestFanOut:
    async def test_three_steps_on_twenty_targets_with_mixed_outcomes(
        self, sshd_factory, engine: Engine
    ) -> None:  # type: ignore[no-untyped-def]
        addresses = loopback_addresses(19)
        server: SshServer = sshd_factory(addresses=addresses)
        duration = unique_sleep()
        ids = new_ids(20)
        credentials = {
            tid: credential_for(server, tid, address) for tid, address in zip(ids, addresses, strict=False)
        }
        # The twentieth has nothing listening: its address answers no SSH at all.
        credentials[ids[19]] = credential_for(server, ids[19], "127.0.3.1", port=free_port("127.0.3.1"))
        failing = {addresses[2], addresses[12]}  # exit 3
        slow = {addresses[3], addresses[13]}  # outlive the step timeout
        branch = " ".join(
            [
                *(f'*" {a} "*) echo three; exit 3;;' for a in failing),
                *(f'*" {a} "*) sleep {duration};;' for a in slow),
            ]
        )
        steps = [
            {"name": "greet", "kind": "command", "command": "echo one {{ who }}"},
            {
                "name": "branch",
                "kind": "command",
                "command": f'case " $SSH_CONNECTION " in {branch} esac; echo two',
                "timeout_s": 5,
            },
            {"name": "last", "kind": "command", "command": "echo three-done"},
        ]
        run = make_run(steps, ids, values={"who": "world"}, concurrency=6)
        recorder = Recorder(credentials)

        started = time.monotonic()
        await execute(engine, run, recorder)
        elapsed = time.monotonic() - started

        assert set(recorder.outcomes) == set(ids)
        by_address = {credentials[tid].host: tid for tid in ids}
        for address in addresses:
            tid, outcome = by_address[address], recorder.outcomes[by_address[address]]
            if address in failing:
                assert (outcome.status, outcome.exit_code) == ("failed", 3)
                assert outcome.error == "step 2 (branch) exited with 3"
                assert recorder.dispatched(tid) == [0, 1]
                assert recorder.text(tid) == "one world\nthree\n"
            elif address in slow:
                assert (outcome.status, outcome.exit_code) == ("timed_out", None)
                assert outcome.error == "step 2 (branch) timed out after 5s"
                assert recorder.dispatched(tid) == [0, 1]
            else:
                assert (outcome.status, outcome.exit_code, outcome.error) == ("succeeded", 0, None)
                assert recorder.text(tid) == "one world\ntwo\nthree-done\n"
                assert recorder.dispatched(tid) == [0, 1, 2]
            assert outcome.attempts == 1
            assert outcome.started_at is not None and outcome.started_at <= outcome.finished_at
        unreachable = recorder.outcomes[ids[19]]
        assert unreachable.status == "failed"
        assert unreachable.error is not None and unreachable.error.startswith(
            "connect: cannot connect to 127.0.3.1"
        )
        assert recorder.dispatched(ids[19]) == []
        # Each target's calls in order: started, (dispatched, step_finished)*, finished.
        for tid in ids:
            kinds = [e[0] for e in recorder.of(tid)]
            assert kinds[0] == "started" and kinds[-1] == "finished"
            assert kinds[1:-1] == ["dispatched", "step_finished"] * len(recorder.dispatched(tid))
        assert recorder.max_running <= 6
        assert elapsed < 40  # a loose bound: steps run side by side, not one target after another
        # The timed-out commands were killed on the server (root's bash sources a slow ~/.bashrc
        # on this machine for the kill command too, hence the generous wait).
        assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"), timeout_s=30)
        assert all(c.ts.tzinfo is not None for c in recorder.chunks)

    async def test_concurrency_bound_holds(self, sshd: SshServer, engine: Engine) -> None:
        ids = new_ids(12)
        recorder = Recorder({tid: credential_for(sshd, tid) for tid in ids})
        run = make_run([{"name": "s", "kind": "command", "command": "sleep 0.3"}], ids, concurrency=3)
        started = time.monotonic()
        await execute(engine, run, recorder)

        assert recorder.max_running == 3
        assert time.monotonic() - started >= 1.2  # 12 targets, 3 at a time, 0.3 s each
        assert {o.status for o in recorder.outcomes.values()} == {"succeeded"}
        # One login per pooled connection, not one per target.
        assert sshd.accepted_logins() <= 3


class TestConnectionFailures:
    async def test_a_target_without_a_pinned_key_is_never_contacted(
        self, sshd: SshServer, engine: Engine
    ) -> None:
        [tid] = new_ids(1)
        recorder = Recorder({tid: credential_for(sshd, tid, pinned=False)})
        await execute(
            engine, make_run([{"name": "s", "kind": "command", "command": "true"}], [tid]), recorder
        )

        outcome = recorder.outcomes[tid]
        assert outcome.status == "failed"
        assert outcome.error is not None and outcome.error.startswith("host_key: no host key is pinned")
        assert sshd.connections() == 0
        assert recorder.dispatched(tid) == []

    async def test_a_changed_host_key_fails_at_host_key(self, sshd: SshServer, engine: Engine) -> None:
        [tid] = new_ids(1)
        credential = credential_for(sshd, tid)
        sshd.restart(new_host_key=True)
        recorder = Recorder({tid: credential})
        await execute(
            engine, make_run([{"name": "s", "kind": "command", "command": "true"}], [tid]), recorder
        )

        assert recorder.outcomes[tid].error.startswith("host_key: host key changed")  # type: ignore[union-attr]
        assert sshd.accepted_logins() == 0

    async def test_rejected_key_fails_at_auth_without_the_secret(
        self, sshd: SshServer, engine: Engine, tmp_path: Path
    ) -> None:
        from opsconductor_testing.sshd import generate_key

        generate_key(tmp_path / "other")
        other_key = (tmp_path / "other").read_text()
        [tid] = new_ids(1)
        credential = credential_for(sshd, tid).model_copy(update={"private_key": other_key})
        recorder = Recorder({tid: credential})
        await execute(
            engine, make_run([{"name": "s", "kind": "command", "command": "true"}], [tid]), recorder
        )

        outcome = recorder.outcomes[tid]
        assert outcome.status == "failed"
        assert outcome.error == "auth: authentication failed: the server rejected the credentials"
        body = repr(recorder.events) + repr(recorder.chunks) + repr(recorder.outcomes)
        for line in other_key.splitlines()[1:-1]:
            assert line not in body

    async def test_no_credential(self, engine: Engine) -> None:
        [tid] = new_ids(1)
        recorder = Recorder({})
        await execute(
            engine, make_run([{"name": "s", "kind": "command", "command": "true"}], [tid]), recorder
        )
        assert recorder.outcomes[tid].status == "failed"
        assert recorder.outcomes[tid].error == "no credential is available for this target"


HOSTILE = {
    "semi": "; touch {marker}",
    "subst": "$(touch {marker})",
    "backticks": "`touch {marker}`",
    "quotes": "it's \"quoted\" '; touch {marker}; echo '",
    "newline": "first\ntouch {marker}\nlast",
    "glob": "* ? [a-z] ~ $HOME ${{PATH}} \\ \\\\ | & > < #",
}


class TestParametersAreData:
    async def test_hostile_values_arrive_literally(self, sshd: SshServer, engine: Engine) -> None:
        marker = f"/tmp/pwned-{uuid.uuid4()}"
        values = {name: text.format(marker=marker) for name, text in HOSTILE.items()}
        printf = "printf '<%s>\\n' " + " ".join(f"{{{{ {name} }}}}" for name in values)
        script = "\n".join(f"printf '[%s]\\n' {{{{ {name} }}}}" for name in values) + "\n"
        recorder, tid = await one_target(
            engine,
            sshd,
            [
                {"name": "echo", "kind": "command", "command": printf},
                {"name": "script", "kind": "script", "script": script},
            ],
            values=values,
        )

        expected = "".join(f"<{v}>\n" for v in values.values()) + "".join(f"[{v}]\n" for v in values.values())
        assert recorder.outcomes[tid].status == "succeeded"
        assert recorder.text(tid) == expected
        assert not Path(marker).exists()

    async def test_secret_values_are_masked_even_split_across_chunks(
        self, sshd: SshServer, engine: Engine
    ) -> None:
        secret = f"Sx-{uuid.uuid4().hex[:16]}"
        command = (
            "printf '%.8s' {{ token }}; sleep 0.4; printf '%s\\n' {{ token }} | cut -c9-;"
            " echo whole {{ token }} >&2"
        )
        recorder, tid = await one_target(
            engine,
            sshd,
            [{"name": "leak", "kind": "command", "command": command}],
            secret_values={"token": secret},
        )

        assert recorder.outcomes[tid].status == "succeeded"
        assert recorder.text(tid) == f"{MASK}\n"
        assert recorder.text(tid, "stderr") == f"whole {MASK}\n"
        everything = repr(recorder.events) + repr(recorder.chunks) + repr(recorder.outcomes)
        assert secret not in everything
        assert secret[:8] not in everything  # the first piece was held back, then masked whole

    async def test_missing_parameter_fails_before_connecting(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine, sshd, [{"name": "s", "kind": "command", "command": "echo {{ nope }}"}]
        )
        assert recorder.outcomes[tid].status == "failed"
        assert "'nope'" in (recorder.outcomes[tid].error or "")
        assert sshd.connections() == 0


class TestOutput:
    async def test_output_is_capped_with_one_truncation_marker(self, sshd: SshServer) -> None:
        engine = Engine(ssh_pool=SshPool(), settings=EngineSettings(output_cap_bytes=10_000))
        try:
            recorder, tid = await one_target(
                engine,
                sshd,
                [
                    {
                        "name": "big",
                        "kind": "command",
                        "command": "head -c 300000 /dev/zero | tr '\\0' x; echo",
                    },
                    {"name": "after", "kind": "command", "command": "echo after"},
                ],
            )
        finally:
            await engine.close()

        outcome = recorder.outcomes[tid]
        assert outcome.status == "succeeded"
        assert outcome.output_truncated
        assert recorder.text(tid) == "x" * 10_000
        markers = [c.data for c in recorder.chunks if c.stream == "system" and "truncated" in c.data]
        assert len(markers) == 1

    async def test_slow_output_hook_holds_commands_back_without_losing_output(self, sshd: SshServer) -> None:
        settings = EngineSettings(
            flush_bytes=16 * 1024, output_buffer_bytes=64 * 1024, output_cap_bytes=10**8
        )
        engine = Engine(ssh_pool=SshPool(), settings=settings)

        class Slow(Recorder):
            batch_sizes: list[int] = []

            async def output(self, chunks: list[EngineChunk]) -> None:
                self.batch_sizes.append(sum(len(c.data) for c in chunks))
                await asyncio.sleep(0.05)
                await super().output(chunks)

        [tid] = new_ids(1)
        recorder = Slow({tid: credential_for(sshd, tid)})
        command = "seq 1 200000"  # about 1.3 MB
        try:
            await execute(
                engine, make_run([{"name": "s", "kind": "command", "command": command}], [tid]), recorder
            )
        finally:
            await engine.close()

        assert recorder.outcomes[tid].status == "succeeded"
        assert recorder.text(tid) == "".join(f"{n}\n" for n in range(1, 200001))
        # Bounded: never much more than the buffer waited for one call.
        assert max(recorder.batch_sizes) <= 64 * 1024 + 64 * 1024


class TestStepsAndRetries:
    async def test_continue_on_error_runs_the_next_step(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine,
            sshd,
            [
                {"name": "may fail", "kind": "command", "command": "exit 5", "continue_on_error": True},
                {"name": "next", "kind": "command", "command": "echo next"},
            ],
        )
        outcome = recorder.outcomes[tid]
        assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
        assert [e for e in recorder.of(tid) if e[0] == "step_finished"] == [
            ("step_finished", tid, 0, 5),
            ("step_finished", tid, 1, 0),
        ]
        assert recorder.text(tid) == "next\n"

    async def test_without_continue_on_error_the_target_stops(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine,
            sshd,
            [
                {"name": "fails", "kind": "command", "command": "exit 5"},
                {"name": "never", "kind": "command", "command": "echo never"},
            ],
        )
        assert (recorder.outcomes[tid].status, recorder.outcomes[tid].exit_code) == ("failed", 5)
        assert recorder.dispatched(tid) == [0]

    async def test_retry_with_backoff_reruns_from_the_failed_step(
        self, sshd: SshServer, engine: Engine
    ) -> None:
        state = f"/tmp/opsc-retry-{uuid.uuid4()}"
        steps = [
            {"name": "once", "kind": "command", "command": f"echo x >> {state}.first"},
            {
                "name": "flaky",
                "kind": "command",
                "command": f"n=$(cat {state} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {state};"
                " test $n -ge 3",
            },
        ]
        started = time.monotonic()
        recorder, tid = await one_target(
            engine, sshd, steps, retry=RetrySpec(count=3, delay_s=0.2, backoff=2)
        )
        elapsed = time.monotonic() - started
        try:
            outcome = recorder.outcomes[tid]
            assert (outcome.status, outcome.attempts) == ("succeeded", 3)
            assert [e[2] for e in recorder.of(tid) if e[0] == "started"] == [1, 2, 3]
            assert recorder.dispatched(tid) == [0, 1, 1, 1]  # the first step ran once
            assert Path(f"{state}.first").read_text() == "x\n"
            assert elapsed >= 0.2 + 0.4  # delay, then delay * backoff
            retries = [c.data for c in recorder.chunks if c.stream == "system" and "retrying" in c.data]
            assert retries == [
                "attempt 1 failed; retrying from step 2 in 0.2s",
                "attempt 2 failed; retrying from step 2 in 0.4s",
            ]
        finally:
            Path(state).unlink(missing_ok=True)
            Path(f"{state}.first").unlink(missing_ok=True)

    async def test_retries_run_out(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine,
            sshd,
            [{"name": "no", "kind": "command", "command": "exit 2"}],
            retry=RetrySpec(count=1, delay_s=0),
        )
        assert (recorder.outcomes[tid].status, recorder.outcomes[tid].attempts) == ("failed", 2)

    async def test_no_step_is_dispatched_before_the_attempts_start_is_stored(
            self, sshd: SshServer, engine: Engine) -> None:
        """The start is stored beside the credential fetch, never after the command was sent:
        recovery reads a dispatched step as 'may have run' only with its start beside it."""

        class SlowStart(Recorder):
            async def target_started(self, target_id: str, attempt: int) -> None:
                await asyncio.sleep(0.3)
                await super().target_started(target_id, attempt)

        [tid] = new_ids(1)
        recorder = SlowStart({tid: credential_for(sshd, tid)})
        run = make_run([{"name": "no", "kind": "command", "command": "exit 2"}], [tid],
                       retry=RetrySpec(count=1, delay_s=0))
        await execute(engine, run, recorder)
        assert [e[0] for e in recorder.of(tid)] == [
            "started", "dispatched", "step_finished", "started", "dispatched", "step_finished",
            "finished"]

    async def test_a_start_that_cannot_be_stored_sends_nothing(self, sshd: SshServer,
                                                                engine: Engine) -> None:
        class LostLease(Recorder):
            async def target_started(self, target_id: str, attempt: int) -> None:
                raise LeaseLost("taken over")

        [tid] = new_ids(1)
        recorder = LostLease({tid: credential_for(sshd, tid)})
        await execute(engine, make_run([{"name": "s", "kind": "command",
                                         "command": "echo hi"}], [tid]), recorder)
        assert recorder.dispatched(tid) == []
        assert "hi" not in recorder.text(tid)
        assert recorder.outcomes[tid].status == "failed"

    async def test_resume_point_and_attempts_done(self, sshd: SshServer, engine: Engine) -> None:
        [tid] = new_ids(1)
        recorder = Recorder({tid: credential_for(sshd, tid)})
        run = make_run(
            [{"name": f"s{n}", "kind": "command", "command": f"echo {n}"} for n in range(3)], [tid]
        )
        plan = TargetPlan(tid, "n", "ssh", first_step=2, attempts_done=1)
        await engine.run(run, [plan], recorder, recorder, asyncio.Event())
        assert recorder.text(tid) == "2\n"
        assert recorder.outcomes[tid].attempts == 2
        assert recorder.dispatched(tid) == [2]

    async def test_job_timeout(self, sshd: SshServer, engine: Engine) -> None:
        duration = unique_sleep()
        ids = new_ids(4)
        recorder = Recorder({tid: credential_for(sshd, tid) for tid in ids})
        run = make_run(
            [{"name": "long", "kind": "command", "command": f"sleep {duration}"}],
            ids,
            concurrency=2,
            timeout_s=1,
        )
        started = time.monotonic()
        await execute(engine, run, recorder)

        assert time.monotonic() - started < 3
        assert {o.status for o in recorder.outcomes.values()} == {"timed_out"}
        never = [tid for tid in ids if not recorder.dispatched(tid)]
        assert len(never) == 2  # pending when the time ran out: never connected
        assert all(recorder.outcomes[t].started_at is None for t in never)
        assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"), timeout_s=30)


class TestUploadsAndScripts:
    async def test_upload_then_cat(self, sshd: SshServer, engine: Engine) -> None:
        destination = f"/tmp/opsc-upload-{uuid.uuid4()}"
        try:
            recorder, tid = await one_target(
                engine,
                sshd,
                [
                    {
                        "name": "put",
                        "kind": "upload",
                        "content": "hello {{ who }}\nkeep {{ other }}\n",
                        "destination": destination,
                    },
                    {"name": "show", "kind": "command", "command": f"cat {destination}"},
                ],
                values={"who": "it's me"},
            )
            assert recorder.outcomes[tid].status == "succeeded"
            assert recorder.text(tid) == "hello it's me\nkeep {{ other }}\n"
            size = len("hello it's me\nkeep {{ other }}\n")
            assert any(f"uploaded {size} bytes" in c.data for c in recorder.chunks if c.stream == "system")
        finally:
            Path(destination).unlink(missing_ok=True)

    async def test_upload_into_a_missing_directory_fails(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine,
            sshd,
            [
                {
                    "name": "put",
                    "kind": "upload",
                    "content": "x",
                    "destination": f"/nonexistent-{uuid.uuid4()}/f",
                },
            ],
        )
        assert recorder.outcomes[tid].status == "failed"
        assert "upload to" in (recorder.outcomes[tid].error or "")

    async def test_scripts_go_to_the_interpreter_on_stdin(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine,
            sshd,
            [
                {"name": "sh", "kind": "script", "script": 'a={{ v }}\necho "sh:$a"\nexit 0\n'},
                {
                    "name": "py",
                    "kind": "script",
                    "interpreter": "/usr/bin/env python3",
                    "script": "import sys\nprint('py', {{ v }})\nsys.exit(7)\n",
                },
            ],
            values={"v": "x y"},
        )
        assert recorder.text(tid) == "sh:x y\npy x y\n"
        assert (recorder.outcomes[tid].status, recorder.outcomes[tid].exit_code) == ("failed", 7)

    async def test_a_command_reading_stdin_sees_end_of_file(self, sshd: SshServer, engine: Engine) -> None:
        recorder, tid = await one_target(
            engine, sshd, [{"name": "cat", "kind": "command", "command": "cat; echo ok", "timeout_s": 5}]
        )
        assert recorder.outcomes[tid].status == "succeeded"
        assert recorder.text(tid) == "ok\n"


class TestDispatchOrder:
    async def test_step_dispatched_is_recorded_before_the_step_runs(
        self, sshd: SshServer, engine: Engine
    ) -> None:
        marker = Path(f"/tmp/opsc-dispatch-{uuid.uuid4()}")
        seen: list[bool] = []

        class Checking(Recorder):
            async def step_dispatched(self, target_id: str, step_index: int) -> None:
                seen.append(marker.exists())
                await asyncio.sleep(0.2)  # a slow store: the step must still wait for it
                seen.append(marker.exists())
                await super().step_dispatched(target_id, step_index)

        [tid] = new_ids(1)
        recorder = Checking({tid: credential_for(sshd, tid)})
        try:
            await execute(
                engine,
                make_run([{"name": "touch", "kind": "command", "command": f"touch {marker}"}], [tid]),
                recorder,
            )
            assert recorder.outcomes[tid].status == "succeeded"
            assert seen == [False, False]
            assert marker.exists()
        finally:
            marker.unlink(missing_ok=True)
