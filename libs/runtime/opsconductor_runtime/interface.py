"""The runtime port. Apps see only this; the adapters are `embedded` and `dapr`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


class RuntimeError_(Exception):
    """Base for runtime failures (named to avoid shadowing the builtin)."""


class AppUnavailable(RuntimeError_):
    """The target app could not be reached (unknown id, down, denied by policy)."""


class PublishFailed(RuntimeError_):
    """The broker did not accept the event; the outbox keeps it and retries."""


class ETagMismatch(RuntimeError_):
    """A conditional state write lost the race; re-read and try again."""


class SecretNotFound(RuntimeError_):
    pass


@dataclass
class InvokeResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class StateItem:
    key: str
    value: bytes
    etag: str

    def json(self) -> Any:
        return json.loads(self.value)


class Runtime(Protocol):
    """What one app may do outside itself. `app_id` is the caller's own id."""

    app_id: str

    async def invoke(
        self,
        app_id: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        timeout_s: float = 10.0,
    ) -> InvokeResponse: ...

    async def publish(self, pubsub: str, topic: str, event: dict[str, Any], *,
                      transient: bool = False) -> None:
        """Publish a complete CloudEvent (its `id` is what consumers deduplicate on).

        `transient`: a live copy of something already stored (output chunks): delivered at most
        once, and the embedded broker does not keep it; a consumer that misses it reads storage.
        A broker that always keeps messages (Dapr's) may treat it as any other event."""
        ...

    async def get_state(self, store: str, key: str) -> StateItem | None: ...

    async def save_state(self, store: str, key: str, value: bytes, *, etag: str | None = None,
                         ttl_s: int | None = None) -> None:
        """`etag=None` writes unconditionally; otherwise raises ETagMismatch if it changed.
        `etag=""` means: only if the key does not exist yet (first write wins)."""
        ...

    async def delete_state(self, store: str, key: str, *, etag: str | None = None) -> None: ...

    async def get_secret(self, store: str, key: str) -> str: ...

    async def close(self) -> None: ...
