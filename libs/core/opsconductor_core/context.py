"""Request context carried through logs, invocations and events: correlation id and traceparent."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

CORRELATION_HEADER = "X-Correlation-ID"
TRACEPARENT_HEADER = "traceparent"

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
traceparent_var: ContextVar[str | None] = ContextVar("traceparent", default=None)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def accept_correlation_id(value: str | None) -> str:
    """Echo a caller's id when it is a sane token; otherwise mint one (never log raw input)."""
    if value and _SAFE_ID.match(value):
        return value
    return new_correlation_id()


def accept_traceparent(value: str | None) -> str | None:
    return value if value and _TRACEPARENT.match(value) else None


def current_correlation_id() -> str | None:
    return correlation_id_var.get()


def outgoing_headers() -> dict[str, str]:
    """Headers that carry the current context to another service or into an event."""
    headers: dict[str, str] = {}
    if cid := correlation_id_var.get():
        headers[CORRELATION_HEADER] = cid
    if tp := traceparent_var.get():
        headers[TRACEPARENT_HEADER] = tp
    return headers
