"""What a run is: the job snapshot `jobs` hands to `executor`, and how parameters reach a shell.

Parameters are data, never code: every `{{ name }}` in a step is replaced by the value quoted for
the target's shell (POSIX single quotes over SSH, PowerShell single quotes over WinRM), so no value
can start a second command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ParameterType = Literal["string", "int", "bool", "choice", "secret"]
StepKind = Literal["command", "script", "upload"]
Trigger = Literal["manual", "schedule", "api"]
Protocol = Literal["ssh", "winrm"]
ParameterValue = str | int | bool

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
DEFAULT_CONCURRENCY = 50
MAX_CONCURRENCY = 5000


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: StepKind
    command: str | None = Field(default=None, max_length=65536)
    script: str | None = Field(default=None, max_length=1_048_576)
    interpreter: str | None = Field(default=None, max_length=200)
    content: str | None = Field(default=None, max_length=10_485_760)
    destination: str | None = Field(default=None, max_length=4096)
    timeout_s: int | None = Field(default=None, ge=1, le=86_400)
    continue_on_error: bool = False
    # Safe to run again after a crash left its outcome unknown.
    idempotent: bool = False


class ParameterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    type: ParameterType = "string"
    required: bool = False
    default: ParameterValue | None = None
    choices: list[str] | None = None


class RetrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=0, ge=0, le=10)
    delay_s: float = Field(default=0, ge=0, le=3600)
    backoff: float = Field(default=1.0, ge=1.0, le=10.0)


class RunTarget(BaseModel):
    target_id: str
    name: str
    protocol: Protocol


class RunRequest(BaseModel):
    """Body of executor's `POST /internal/executions`: a frozen snapshot of the job for one run."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    job_name: str
    job_version: int
    trigger: Trigger = "manual"
    requested_by: str
    steps: list[StepSpec] = Field(min_length=1)
    parameters: list[ParameterSpec] = []
    # Non-secret values, already validated and typed by `jobs`.
    values: dict[str, ParameterValue] = {}
    # Secret values: held encrypted only while the run needs them; never stored in the clear,
    # never in a response, event or log.
    secret_values: dict[str, str] = Field(default={}, repr=False)
    targets: list[RunTarget] = Field(min_length=1)
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)
    timeout_s: int | None = Field(default=None, ge=1, le=7 * 86_400)
    retry: RetrySpec = RetrySpec()
    # The execution this one retries (retry-failed), and a key that makes a repeated request one run.
    retry_of: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)


class ExecutionCreated(BaseModel):
    execution_id: str


def posix_quote(value: str) -> str:
    return shlex.quote(value)


# PowerShell treats the typographic single quotes as quote characters too; double every one.
_PS_QUOTES = re.compile("['\u2018\u2019\u201a\u201b]")


def powershell_quote(value: str) -> str:
    return "'" + _PS_QUOTES.sub(lambda m: m.group(0) * 2, value) + "'"


def quote_for(protocol: Protocol) -> Callable[[str], str]:
    return posix_quote if protocol == "ssh" else powershell_quote


def as_text(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def render(template: str, values: Mapping[str, ParameterValue], quote: Callable[[str], str]) -> str:
    """Replace each `{{ name }}` with its quoted value; a name without a value is a KeyError."""
    return PLACEHOLDER.sub(lambda m: quote(as_text(values[m.group(1)])), template)
