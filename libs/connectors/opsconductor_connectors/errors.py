"""One error taxonomy for SSH and WinRM: every failure names the stage it happened in.

Messages are written here, from fixed text plus host, port and user name, and are scrubbed of
every secret the connector holds before they leave: a password or key never reaches a log line,
an API response or an event through an exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opsconductor_connectors.results import CommandResult


class Stage(StrEnum):
    RESOLVE = "resolve"
    CONNECT = "connect"
    HOST_KEY = "host_key"
    AUTH = "auth"
    COMMAND = "command"
    TIMEOUT = "timeout"


REDACTED = "[redacted]"
_MIN_SECRET_LEN = 4  # shorter values would redact ordinary words


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (and each line of a multi-line secret such as a key) removed."""
    for secret in secrets:
        if not secret:
            continue
        pieces = [secret, *(line.strip() for line in secret.splitlines())]
        for piece in sorted(set(pieces), key=len, reverse=True):
            if len(piece) >= _MIN_SECRET_LEN and not piece.startswith("-----"):
                text = text.replace(piece, REDACTED)
    return text


class ConnectorError(Exception):
    """A connection or command failed at `stage`; `message` is safe to show an operator.

    A timeout has stage `timeout` and `during` says which stage ran out of time. `partial` holds
    the output a timed-out or interrupted command had produced so far.
    """

    def __init__(
        self,
        stage: Stage,
        message: str,
        *,
        during: Stage | None = None,
        partial: CommandResult | None = None,
        host_key_fingerprint: str | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.stage = Stage(stage)
        self.during = Stage(during) if during else (None if stage is Stage.TIMEOUT else self.stage)
        self.message = scrub(message, secrets)
        self.partial = partial
        self.host_key_fingerprint = host_key_fingerprint
        self.timings: dict[str, float] = {}  # stages completed before the failure, in ms
        super().__init__(self.message)

    @property
    def reported_stage(self) -> Stage:
        """The stage an operator sees (a timeout is reported at the stage that ran out of time)."""
        return self.during or self.stage

    def __str__(self) -> str:
        return f"{self.stage.value}: {self.message}"

    def __repr__(self) -> str:
        return f"ConnectorError(stage={self.stage.value!r}, message={self.message!r})"


def timeout_error(during: Stage, seconds: float, **kwargs: object) -> ConnectorError:
    return ConnectorError(
        Stage.TIMEOUT,
        f"timed out after {seconds:g}s during {during.value}",
        during=during,
        **kwargs,  # type: ignore[arg-type]
    )
