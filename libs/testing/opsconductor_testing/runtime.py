"""A recording runtime for unit tests at the runtime port (never the only test of a path)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.types import ASGIApp

from opsconductor_runtime.interface import (
    AppUnavailable,
    ETagMismatch,
    InvokeResponse,
    SecretNotFound,
    StateItem,
)


@dataclass
class Published:
    pubsub: str
    topic: str
    event: dict[str, Any]


@dataclass
class RecordingRuntime:
    """In-memory state and secrets, published events kept in `published`, invoke routed to
    ASGI apps registered with `mount(app_id, app)`."""

    app_id: str = "test"
    published: list[Published] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    apps: dict[str, ASGIApp] = field(default_factory=dict)
    fail_publish: bool = False
    _state: dict[tuple[str, str], tuple[bytes, int, float | None]] = field(default_factory=dict)

    def mount(self, app_id: str, app: ASGIApp) -> None:
        self.apps[app_id] = app

    def topics(self) -> list[str]:
        return [p.topic for p in self.published]

    async def invoke(
        self,
        app_id: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
        timeout_s: float = 10.0,
    ) -> InvokeResponse:
        app = self.apps.get(app_id)
        if app is None:
            raise AppUnavailable(app_id)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{app_id}") as client:
            response = await client.request(
                method, path, json=json_body, content=content, headers=headers, params=params
            )
        return InvokeResponse(response.status_code, response.content, dict(response.headers))

    async def publish(self, pubsub: str, topic: str, event: dict[str, Any], *,
                      transient: bool = False) -> None:
        if self.fail_publish:
            from opsconductor_runtime.interface import PublishFailed

            raise PublishFailed("broker down (test)")
        self.published.append(Published(pubsub, topic, event))

    async def get_state(self, store: str, key: str) -> StateItem | None:
        entry = self._state.get((store, key))
        if entry is None:
            return None
        value, etag, expires = entry
        if expires is not None and expires <= time.time():
            del self._state[(store, key)]
            return None
        return StateItem(key, value, str(etag))

    async def save_state(
        self, store: str, key: str, value: bytes, *, etag: str | None = None, ttl_s: int | None = None
    ) -> None:
        current = await self.get_state(store, key)
        if etag is not None and (current.etag if current else "") != etag:
            raise ETagMismatch(key)
        version = int(current.etag) + 1 if current else 1
        expires = time.time() + ttl_s if ttl_s else None
        self._state[(store, key)] = (value, version, expires)

    async def delete_state(self, store: str, key: str, *, etag: str | None = None) -> None:
        current = await self.get_state(store, key)
        if etag is not None and current is not None and current.etag != etag:
            raise ETagMismatch(key)
        self._state.pop((store, key), None)

    async def get_secret(self, store: str, key: str) -> str:
        try:
            return self.secrets[key]
        except KeyError:
            raise SecretNotFound(key) from None

    async def close(self) -> None:
        return None
