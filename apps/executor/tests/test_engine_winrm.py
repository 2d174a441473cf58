"""WinRM steps through the WS-Management test peer (pywinrm's real exchange).

There is no PowerShell here. The peer runs each command line with /bin/sh, so a small
`powershell.exe` stand-in on PATH records what it was given (its -EncodedCommand bootstrap and
the base64 step text that arrived on standard input through WinRM Send) and runs the step text
with /bin/sh. What is checked: the step's text and quoting as PowerShell would receive them,
output and exit codes through WinRM, and cancel through WinRM Signal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from pathlib import Path

import pytest

from opsconductor_connectors import SshPool
from opsconductor_contracts.clients.targets import TargetCredential, WinrmOptions
from opsconductor_contracts.jobspec import RunRequest, RunTarget, StepSpec, powershell_quote
from opsconductor_executor.engine import Engine, EngineChunk, EngineSettings, TargetOutcome, TargetPlan
from opsconductor_executor.steps import (
    RenderedStep,
    SshAction,
    decode_powershell,
    render_steps,
    ssh_action,
    ssh_interpreter_command,
    winrm_action,
)
from opsconductor_testing.sshd import eventually, process_ids_matching, unique_sleep
from opsconductor_testing.winrm_peer import WinrmPeer

STAND_IN = """#!{python}
import base64, json, os, subprocess, sys
args = sys.argv[1:]
bootstrap = base64.b64decode(args[args.index("-EncodedCommand") + 1]).decode("utf-16-le")
payload = sys.stdin.buffer.read()
with open(os.environ["OPSC_PS_LOG"], "a") as log:
    log.write(json.dumps({{"args": args[:-1], "bootstrap": bootstrap, "stdin": payload.decode()}}) + "\\n")
sys.stdout.flush()
sys.exit(subprocess.run(["/bin/sh", "-c", base64.b64decode(payload)]).returncode)
"""


class Recorder:
    def __init__(self, credentials: dict[str, TargetCredential]) -> None:
        self.credentials = credentials
        self.chunks: list[EngineChunk] = []
        self.outcomes: dict[str, TargetOutcome] = {}
        self.dispatched: list[tuple[str, int]] = []

    async def get(self, target_id: str) -> TargetCredential | None:
        return self.credentials.get(target_id)

    async def target_started(self, target_id: str, attempt: int) -> None:
        pass

    async def step_dispatched(self, target_id: str, step_index: int) -> None:
        self.dispatched.append((target_id, step_index))

    async def step_finished(self, target_id: str, step_index: int, exit_code: int | None) -> None:
        pass

    async def output(self, chunks: list[EngineChunk]) -> None:
        self.chunks.extend(chunks)

    async def target_finished(self, target_id: str, outcome: TargetOutcome) -> None:
        self.outcomes[target_id] = outcome

    def text(self, stream: str = "stdout") -> str:
        return "".join(c.data for c in self.chunks if c.stream == stream)


@pytest.fixture
def powershell_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "powershell.exe"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    log = tmp_path / "powershell.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("OPSC_PS_LOG", str(log))
    return log


def winrm_setup(
    peer: WinrmPeer, steps: list[StepSpec], **options: object
) -> tuple[RunRequest, Recorder, str]:
    tid = str(uuid.uuid4())
    credential = TargetCredential(
        target_id=tid,
        name="win",
        host=peer.host,
        port=peer.port,
        protocol="winrm",
        username=peer.username,
        credential_type="password",
        password=peer.password,
        version=1,
        winrm=WinrmOptions(transport="basic", scheme="http", verify_tls=False),
    )
    run = RunRequest(
        job_id=str(uuid.uuid4()),
        job_name="win",
        job_version=1,
        requested_by="tester",
        steps=steps,
        targets=[RunTarget(target_id=tid, name="win", protocol="winrm")],
        **options,
    )  # type: ignore[arg-type]
    return run, Recorder({tid: credential}), tid


def engine(**settings: object) -> Engine:
    return Engine(ssh_pool=SshPool(), settings=EngineSettings(allow_insecure_winrm_http=True, **settings))  # type: ignore[arg-type]


class TestWinrm:
    async def test_command_output_exit_code_and_quoting(
        self, winrm_peer: WinrmPeer, powershell_log: Path
    ) -> None:
        steps = [
            StepSpec(name="hello", kind="command", command="echo hello {{ who }}"),
            StepSpec(name="fail", kind="command", command="echo err >&2; exit 4"),
        ]
        run, recorder, tid = winrm_setup(
            winrm_peer, steps, values={"who": "world"}, secret_values={"pw": "unused-secret-1"}
        )
        runner = engine()
        try:
            await runner.run(run, [TargetPlan(tid, "win", "winrm")], recorder, recorder, asyncio.Event())
        finally:
            await runner.close()

        outcome = recorder.outcomes[tid]
        assert (outcome.status, outcome.exit_code) == ("failed", 4)
        assert recorder.text() == "hello world\n"
        assert recorder.text("stderr") == "err\n"
        calls = [json.loads(line) for line in powershell_log.read_text().splitlines()]
        assert len(calls) == 2
        # The step text reached "PowerShell" on stdin, its value in PowerShell quotes.
        assert base64.b64decode(calls[0]["stdin"]).decode() == "echo hello 'world'"
        assert "[ScriptBlock]::Create" in calls[0]["bootstrap"]
        assert calls[0]["args"][:2] == ["-NoProfile", "-NonInteractive"]
        assert winrm_peer.count("Send") >= 2

    async def test_cancel_signals_terminate(self, winrm_peer: WinrmPeer, powershell_log: Path) -> None:
        duration = unique_sleep()
        steps = [StepSpec(name="wait", kind="command", command=f"sleep {duration}")]
        run, recorder, tid = winrm_setup(winrm_peer, steps)
        runner = engine()
        cancel = asyncio.Event()
        try:
            task = asyncio.create_task(
                runner.run(run, [TargetPlan(tid, "win", "winrm")], recorder, recorder, cancel)
            )
            assert await eventually(lambda: bool(process_ids_matching(f"sleep {duration}")), 10)
            cancel.set()
            started = time.monotonic()
            await asyncio.wait_for(task, 5)
            assert time.monotonic() - started < 2
        finally:
            await runner.close()

        assert recorder.outcomes[tid].status == "canceled"
        assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"))
        assert winrm_peer.count("Signal") >= 1

    async def test_step_timeout(self, winrm_peer: WinrmPeer, powershell_log: Path) -> None:
        duration = unique_sleep()
        steps = [StepSpec(name="wait", kind="command", command=f"sleep {duration}", timeout_s=1)]
        run, recorder, tid = winrm_setup(winrm_peer, steps)
        runner = engine()
        try:
            await runner.run(run, [TargetPlan(tid, "win", "winrm")], recorder, recorder, asyncio.Event())
        finally:
            await runner.close()
        assert recorder.outcomes[tid].status == "timed_out"
        assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"))

    async def test_basic_over_plain_http_is_refused_by_default(self, winrm_peer: WinrmPeer) -> None:
        steps = [StepSpec(name="x", kind="command", command="echo x")]
        run, recorder, tid = winrm_setup(winrm_peer, steps)
        runner = Engine(ssh_pool=SshPool())
        try:
            await runner.run(run, [TargetPlan(tid, "win", "winrm")], recorder, recorder, asyncio.Event())
        finally:
            await runner.close()
        assert recorder.outcomes[tid].status == "failed"
        assert (recorder.outcomes[tid].error or "").startswith(
            "connect: Basic authentication over plain HTTP"
        )
        assert winrm_peer.count("Create") == 0


class TestWinrmActions:
    """How uploads and scripts are sent over WinRM (PowerShell itself is not available here)."""

    def test_upload_sends_the_content_as_base64_to_a_quoted_destination(self) -> None:
        step = RenderedStep(
            0, "put", "upload", None, False, content=b"\x00bytes\xff", destination="C:\\it's here\\f.bin"
        )
        action = winrm_action(step)
        script = decode_powershell(action.command)
        assert base64.b64decode(action.stdin) == b"\x00bytes\xff"
        assert f"$dest = {powershell_quote(step.destination)}" in script
        assert "Move-Item -LiteralPath $part -Destination $dest -Force" in script

    def test_script_with_another_interpreter_runs_from_a_temporary_file(self) -> None:
        step = RenderedStep(0, "py", "script", None, False, text="print(1)", interpreter="python")
        script = decode_powershell(winrm_action(step).command)
        assert "& 'python' $file" in script
        assert "Remove-Item -LiteralPath $file" in script

    def test_pwsh_interpreter_is_the_program(self) -> None:
        step = RenderedStep(0, "ps", "script", None, False, text="Get-Date", interpreter="pwsh")
        assert winrm_action(step).command.startswith("pwsh -NoProfile")

    def test_hostile_values_are_powershell_quoted(self) -> None:
        [step] = render_steps(
            [StepSpec(name="c", kind="command", command="Write-Output {{ v }}")],
            {"v": "'; Remove-Item C:\\ -Recurse; '\u2019"},
            "winrm",
        )
        assert step.text == "Write-Output '''; Remove-Item C:\\ -Recurse; ''\u2019\u2019'"


class TestSshInterpreters:
    @pytest.mark.parametrize(
        ("interpreter", "expected"),
        [
            (None, "/bin/sh -s"),
            ("/bin/bash", "/bin/bash -s"),
            ("python3", "python3 -"),
            ("/usr/bin/env python3", "/usr/bin/env python3 -"),
            ("bash -e", "bash -e"),
            ("/opt/custom/run", "/opt/custom/run"),
        ],
    )
    def test_reads_the_script_from_stdin(self, interpreter: str | None, expected: str) -> None:
        assert ssh_interpreter_command(interpreter) == expected

    def test_only_a_command_using_a_secret_is_sent_as_input(self) -> None:
        specs = [StepSpec(name="plain", kind="command", command="echo {{ user }}"),
                 StepSpec(name="secret", kind="command", command="login {{ user }} {{ pw }}"),
                 StepSpec(name="script", kind="script", script="echo {{ pw }}")]
        plain, secret, script = render_steps(specs, {"user": "ann", "pw": "s3cret"}, "ssh",
                                             secret_names={"pw"})

        assert ssh_action(plain) == SshAction("echo ann", b"", private=False)
        assert ssh_action(secret) == SshAction("login ann s3cret", b"", private=True)
        # A script is input already; its command line names the interpreter alone.
        assert ssh_action(script) == SshAction("/bin/sh -s", b"echo s3cret")
