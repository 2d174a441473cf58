"""What each step sends to a target: rendered text, and the command or upload over SSH or WinRM.

Parameters are data: every `{{ name }}` in a command or script becomes the value quoted for the
target's shell (`jobspec.quote_for`). An upload's destination and content are not shell text, so
their placeholders become the plain value (and unknown names stay as written: a file may well
contain `{{ }}` of its own).

SSH: a command runs in the login shell with an empty standard input; a script goes to its
interpreter's standard input (`/bin/sh -s` by default); an upload goes over SFTP.
WinRM: every step is one PowerShell process started with a short fixed bootstrap as
-EncodedCommand, and the step itself (script text or file content) travels base64-encoded on
standard input (WinRM Send, in blocks): nothing the operator wrote is ever part of a command line
that cmd.exe parses, and its length is not limited by the 8191-character command line.

`SshTransport` and `WinrmTransport` send one rendered step each and report its exit code; the
engine (`Runner`) watches the started command, and stops it on a cancel or a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shlex
import time
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PureWindowsPath
from typing import Any, Literal, Protocol, TypeVar

from opsconductor_connectors import (
    ConnectorError,
    HostKeyPin,
    RunningCommand,
    SshCredential,
    SshSession,
    SshTarget,
    Stage,
    WinrmClient,
    WinrmCredential,
    WinrmTarget,
    WinrmTimeouts,
)
from opsconductor_contracts.clients.targets import TargetCredential, WinrmOptions
from opsconductor_contracts.jobspec import (
    PLACEHOLDER,
    ParameterValue,
    RunRequest,
    StepSpec,
    as_text,
    placeholders,
    powershell_quote,
    quote_for,
    render,
)
from opsconductor_contracts.jobspec import Protocol as TargetProtocol

DEFAULT_SSH_INTERPRETER = "/bin/sh"
DEFAULT_UPLOAD_MODE = 0o644
# Interpreters that read a program from standard input with `-s` (shells) or `-`.
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash"}
_DASH_READERS = {"python", "python2", "python3", "perl", "ruby", "php", "node", "pwsh", "powershell"}
_POWERSHELLS = {"powershell", "powershell.exe", "pwsh", "pwsh.exe"}
T = TypeVar("T")


class MissingParameter(ValueError):
    """A command or script names a parameter that has no value in this run."""


@dataclass(frozen=True)
class RenderedStep:
    index: int
    name: str
    kind: Literal["command", "script", "upload"]
    timeout_s: float | None
    continue_on_error: bool
    text: str = ""  # command or script, parameters quoted in
    private: bool = False  # the text holds a secret parameter's value
    interpreter: str | None = None
    content: bytes = b""  # upload
    destination: str = ""


def parameter_values(run: RunRequest) -> dict[str, ParameterValue]:
    """Defaults, then the run's values, then its secret values."""
    values: dict[str, ParameterValue] = {
        p.name: p.default for p in run.parameters if p.default is not None
    }
    values.update(run.values)
    values.update(run.secret_values)
    return values


def _render_plain(template: str, values: Mapping[str, ParameterValue]) -> str:
    def one(match: object) -> str:
        name = match.group(1)  # type: ignore[attr-defined]
        return as_text(values[name]) if name in values else match.group(0)  # type: ignore[attr-defined]

    return PLACEHOLDER.sub(one, template)


def render_steps(
    steps: list[StepSpec], values: Mapping[str, ParameterValue], protocol: TargetProtocol,
    secret_names: Collection[str] = (),
) -> list[RenderedStep]:
    quote = quote_for(protocol)
    out: list[RenderedStep] = []
    for index, step in enumerate(steps):
        common: dict[str, Any] = {
            "index": index,
            "name": step.name,
            "kind": step.kind,
            "timeout_s": float(step.timeout_s) if step.timeout_s else None,
            "continue_on_error": step.continue_on_error,
        }
        try:
            if step.kind == "upload":
                out.append(
                    RenderedStep(
                        **common,
                        content=_render_plain(step.content or "", values).encode(),
                        destination=_render_plain(step.destination or "", values),
                    )
                )
            else:
                source = step.command if step.kind == "command" else step.script
                out.append(
                    RenderedStep(
                        **common,
                        text=render(source or "", values, quote),
                        private=not placeholders(source or "").isdisjoint(secret_names),
                        interpreter=step.interpreter,
                    )
                )
        except KeyError as exc:
            raise MissingParameter(
                f"step {index + 1} ({step.name}) uses the parameter {exc.args[0]!r}, which has no value"
            ) from None
    return out


# --- SSH ---------------------------------------------------------------------------------------


def ssh_interpreter_command(interpreter: str | None) -> str:
    """The command line that reads a script from standard input."""
    text = (interpreter or DEFAULT_SSH_INTERPRETER).strip()
    words = text.split()
    program = words[-1] if words[0].endswith("/env") and len(words) > 1 else words[0]
    name = program.rsplit("/", 1)[-1]
    base = name.rstrip("0123456789.") or name
    if len(words) > 1 and not words[0].endswith("/env"):
        return text  # the operator gave arguments: take them as written
    if name in _SHELLS or base in _SHELLS:
        return f"{text} -s"
    if name in _DASH_READERS or base in _DASH_READERS:
        return f"{text} -"
    return text


@dataclass(frozen=True)
class SshAction:
    command: str
    stdin: bytes
    private: bool = False  # send the command as input: never on the target's command lines


def ssh_action(step: RenderedStep) -> SshAction:
    if step.kind == "script":
        return SshAction(ssh_interpreter_command(step.interpreter), step.text.encode())
    return SshAction(step.text, b"", private=step.private)


# --- WinRM -------------------------------------------------------------------------------------

_PREAMBLE = "$ProgressPreference = 'SilentlyContinue'\n"
_READ_INPUT = "$bytes = [Convert]::FromBase64String([Console]::In.ReadToEnd())\n"

_RUN_POWERSHELL = (
    _PREAMBLE
    + _READ_INPUT
    + "$global:LASTEXITCODE = 0\n"
    "try { . ([ScriptBlock]::Create([Text.Encoding]::UTF8.GetString($bytes))) }\n"
    "catch { [Console]::Error.WriteLine($_.ToString()); exit 1 }\n"
    "exit $global:LASTEXITCODE\n"
)


def encoded_powershell(script: str, program: str = "powershell.exe") -> str:
    encoded = base64.b64encode(script.encode("utf-16-le")).decode()
    return f"{program} -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encoded}"


def decode_powershell(command_line: str) -> str:
    """The script inside `encoded_powershell` output (tests and diagnostics)."""
    return base64.b64decode(command_line.rsplit(" ", 1)[1]).decode("utf-16-le")


def _upload_script(destination: str) -> str:
    part = f"{destination}.opsc-{secrets.token_hex(4)}.part"
    return (
        _PREAMBLE
        + "$ErrorActionPreference = 'Stop'\n"
        + _READ_INPUT
        + f"$dest = {powershell_quote(destination)}\n"
        + f"$part = {powershell_quote(part)}\n"
        "try {\n"
        "  [IO.File]::WriteAllBytes($part, $bytes)\n"
        "  Move-Item -LiteralPath $part -Destination $dest -Force\n"
        "} catch {\n"
        "  Remove-Item -LiteralPath $part -Force -ErrorAction SilentlyContinue\n"
        "  [Console]::Error.WriteLine($_.ToString()); exit 1\n"
        "}\n"
        "exit 0\n"
    )


def _interpreter_words(interpreter: str) -> list[str]:
    return [word.strip("\"'") for word in shlex.split(interpreter, posix=False)]


def _other_interpreter_script(interpreter: str) -> str:
    """Write the script to a temporary file, run `interpreter file`, remove the file."""
    words = _interpreter_words(interpreter)
    name = PureWindowsPath(words[0]).name.lower()
    is_cmd = name in ("cmd", "cmd.exe")
    suffix = ".cmd" if is_cmd else (".py" if name.startswith("python") else ".txt")
    call = " ".join(powershell_quote(word) for word in words)
    if is_cmd and len(words) == 1:
        call += " '/d' '/c'"
    return (
        _PREAMBLE
        + _READ_INPUT
        + "$file = Join-Path ([IO.Path]::GetTempPath()) ('opsc-' + [Guid]::NewGuid().ToString('N')"
        + f" + '{suffix}')\n"
        "[IO.File]::WriteAllBytes($file, $bytes)\n"
        f"try {{ & {call} $file; $code = $LASTEXITCODE }}\n"
        "finally { Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue }\n"
        "exit $code\n"
    )


@dataclass(frozen=True)
class WinrmAction:
    command: str  # a PowerShell bootstrap as -EncodedCommand
    stdin: bytes  # base64 of the script or file content


def winrm_action(step: RenderedStep) -> WinrmAction:
    if step.kind == "upload":
        return WinrmAction(encoded_powershell(_upload_script(step.destination)), _b64(step.content))
    interpreter = (step.interpreter or "").strip()
    payload = _b64(step.text.encode())
    if step.kind == "command" or not interpreter:
        return WinrmAction(encoded_powershell(_RUN_POWERSHELL), payload)
    words = _interpreter_words(interpreter)
    if PureWindowsPath(words[0]).name.lower() in _POWERSHELLS and len(words) == 1:
        return WinrmAction(encoded_powershell(_RUN_POWERSHELL, program=words[0]), payload)
    return WinrmAction(encoded_powershell(_other_interpreter_script(interpreter)), payload)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- sending a step ----------------------------------------------------------------------------


class StepTimedOut(Exception):
    """The step ran past its timeout; its command was stopped."""


class Runner(Protocol):
    """What a transport needs from the engine while it sends a step."""

    async def race(self, awaitable: Awaitable[T], timeout_s: float | None = None) -> T: ...
    async def follow(self, target_id: str, running: RunningCommand, limit: float | None) -> int | None: ...
    def note(self, target_id: str, message: str) -> None: ...


# Parsing a key and hashing it (twice) costs more than the rest of a pooled dispatch; a pin is
# immutable, so each distinct text is parsed once (a malformed one is not cached: it raises).
_pin_from_key = lru_cache(maxsize=4096)(HostKeyPin.from_public_key)
_pin_parsed = lru_cache(maxsize=4096)(HostKeyPin.parse)


def ssh_endpoint(credential: TargetCredential) -> tuple[SshTarget, SshCredential]:
    """Target and credential for the connectors; no pinned key → ConnectorError(host_key)."""
    try:
        if credential.host_key:
            pin = _pin_from_key(credential.host_key)
        elif credential.host_key_fingerprint:
            pin = _pin_parsed(credential.host_key_fingerprint)
        else:
            raise ConnectorError(
                Stage.HOST_KEY,
                "no host key is pinned for this target: probe it and pin the key before running jobs",
            )
    except ValueError:
        raise ConnectorError(Stage.HOST_KEY, "the pinned host key of this target is malformed") from None
    try:
        ssh_credential = SshCredential(
            credential.username,
            password=credential.password if credential.credential_type == "password" else None,
            private_key=credential.private_key if credential.credential_type == "private_key" else None,
            passphrase=credential.passphrase,
            version=credential.version,
        )
    except ValueError as exc:
        raise ConnectorError(Stage.AUTH, f"the target's credential is incomplete: {exc}") from None
    return SshTarget(credential.host, credential.port, pin), ssh_credential


class Transport(Protocol):
    async def run_step(self, target_id: str, step: RenderedStep, limit: float | None) -> int | None: ...


class SshTransport:
    def __init__(self, runner: Runner, session: SshSession) -> None:
        self.runner = runner
        self.session = session

    async def run_step(self, target_id: str, step: RenderedStep, limit: float | None) -> int | None:
        if step.kind == "upload":
            started = time.monotonic()
            try:
                result = await self.runner.race(
                    self.session.upload(step.content, step.destination, mode=DEFAULT_UPLOAD_MODE), limit
                )
            except TimeoutError:
                raise StepTimedOut from None
            self.runner.note(
                target_id,
                f"uploaded {result.size} bytes to {result.destination}"
                f" in {(time.monotonic() - started) * 1000:.0f} ms",
            )
            return 0
        action = ssh_action(step)
        # Not raced with a stop (cut short, it could leave a command running that nobody
        # watches); only a server that never answers ends it.
        try:
            async with asyncio.timeout(limit):
                running = await self.session.start(action.command, stdin=action.stdin,
                                                   private=action.private, max_capture_bytes=0)
        except TimeoutError:
            raise StepTimedOut from None
        return await self.runner.follow(target_id, running, limit)


class WinrmTransport:
    def __init__(
        self,
        runner: Runner,
        credential: TargetCredential,
        *,
        connect_timeout_s: float,
        operation_timeout_s: int,
        allow_insecure_http: bool,
    ) -> None:
        self.runner = runner
        options = credential.winrm or WinrmOptions()
        self.client = WinrmClient(
            WinrmTarget(
                credential.host,
                credential.port,
                scheme=options.scheme,
                verify_tls=options.verify_tls,
                allow_insecure_http=allow_insecure_http,
            ),
            WinrmCredential(
                credential.username,
                credential.password or "",
                auth=options.transport,
                version=credential.version,
            ),
            timeouts=WinrmTimeouts(auth_s=connect_timeout_s, operation_s=operation_timeout_s),
        )

    async def run_step(self, target_id: str, step: RenderedStep, limit: float | None) -> int | None:
        action = winrm_action(step)
        # Raced: the connector stops a command whose start was canceled (winrm.WinrmClient.start).
        started = self.client.start(action.command, stdin=action.stdin, max_capture_bytes=0)
        running = await self.runner.race(started)
        code = await self.runner.follow(target_id, running, limit)
        if step.kind == "upload" and code == 0:
            self.runner.note(target_id, f"uploaded {len(step.content)} bytes to {step.destination}")
        return code
