"""Result shapes shared by SSH and WinRM, so the executor handles both the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from opsconductor_connectors.errors import Stage

StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """A piece of output in arrival order; `data` is decoded UTF-8 (invalid bytes replaced)."""

    stream: StreamName
    data: str


@dataclass(frozen=True, slots=True)
class StageTiming:
    stage: Stage
    ok: bool
    latency_ms: float


@dataclass(frozen=True, slots=True)
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int | None
    exit_signal: str | None = None
    canceled: bool = False
    truncated: bool = False  # captured output hit the cap; the streamed chunks were complete
    duration_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.canceled


@dataclass(frozen=True, slots=True)
class UploadResult:
    destination: str
    size: int
    mode: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class ConnectionCheck:
    """The outcome of a connection test, in the API's shape (see `as_dict`)."""

    ok: bool
    stage: Stage
    latency_ms: float
    message: str
    host_key_fingerprint: str | None = None
    os_info: str | None = None
    stages: tuple[StageTiming, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "stage": self.stage.value,
            "latency_ms": round(self.latency_ms, 1),
            "message": self.message,
            "stages": [
                {"stage": t.stage.value, "ok": t.ok, "latency_ms": round(t.latency_ms, 1)}
                for t in self.stages
            ],
        }
        if self.host_key_fingerprint:
            out["host_key_fingerprint"] = self.host_key_fingerprint
        if self.os_info:
            out["os_info"] = self.os_info
        return out
