"""The embedded host: registers apps, routes invocations to their real HTTP routes in-process,
and owns the broker, state store, secret store and cron bindings they share."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.types import ASGIApp, Message

from opsconductor_runtime.embedded.bindings import CronScheduler, load_cron_bindings
from opsconductor_runtime.embedded.pubsub import (
    DeliveryResult,
    EmbeddedBroker,
    parse_subscriptions,
)
from opsconductor_runtime.embedded.secrets import LocalFileSecretStore
from opsconductor_runtime.embedded.state import EmbeddedStateStore
from opsconductor_runtime.embedded.store import HostStore
from opsconductor_runtime.interface import AppUnavailable, InvokeResponse, SecretNotFound, StateItem

log = logging.getLogger("opsconductor.embedded")

CALLER_HEADER = "dapr-caller-app-id"
# What the ASGI transport reports as the peer: port 0, which no TCP connection has (apps tell
# the host's calls from socket requests by it).
CLIENT = ("127.0.0.1", 0)
# Paths the direct call takes as they are; anything else (percent-escapes, dot segments, a query
# in the path, non-ASCII) goes through httpx, which normalises it.
_PLAIN_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/~:@!$&'()*+,;=")


class EmbeddedHost:
    def __init__(self, data_dir: Path, *, components_dir: Path | None = None,
                 secrets_file: Path | None = None, max_delivery_attempts: int = 5,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.components_dir = components_dir
        self._store = HostStore(data_dir / "runtime.db")
        self.state = EmbeddedStateStore(self._store)
        self.secrets = LocalFileSecretStore(secrets_file or data_dir / "secrets.json")
        self.broker = EmbeddedBroker(self._store, self._deliver, max_attempts=max_delivery_attempts,
                                     backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s)
        self.cron = CronScheduler(load_cron_bindings(components_dir), self._fire_binding,
                                  lambda: list(self._apps))
        self._apps: dict[str, ASGIApp] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Before the apps start: they may read state and secrets in their lifespans."""
        await self._store.open()
        await self.state.load()

    async def start_delivery(self) -> None:
        """After every app started: learn subscriptions, then deliver and fire bindings."""
        subscriptions = []
        for app_id in self._apps:
            response = await self.call(app_id, "GET", "/dapr/subscribe")
            if response.status == 200:
                subscriptions += parse_subscriptions(app_id, response.json())
        self.broker.set_subscriptions(subscriptions)
        self.broker.start()
        self.cron.start()
        log.info("embedded runtime delivering", extra={
            "subscriptions": len(subscriptions), "apps": sorted(self._apps)})

    async def close(self) -> None:
        await self.cron.stop()
        await self.broker.stop()
        for client in self._clients.values():
            await client.aclose()
        await self._store.close()

    # -- apps ------------------------------------------------------------------------------
    def register(self, app_id: str, app: ASGIApp) -> None:
        self._apps[app_id] = app
        transport = httpx.ASGITransport(app=app, client=CLIENT)
        self._clients[app_id] = httpx.AsyncClient(transport=transport, base_url=f"http://{app_id}")

    def runtime_for(self, app_id: str) -> EmbeddedRuntime:
        return EmbeddedRuntime(self, app_id)

    @property
    def app_ids(self) -> list[str]:
        return list(self._apps)

    async def call(self, app_id: str, method: str, path: str, *, caller: str | None = None,
                   json_body: Any = None, content: bytes | None = None,
                   headers: dict[str, str] | None = None, params: Any = None,
                   timeout_s: float = 10.0) -> InvokeResponse:
        app = self._apps.get(app_id)
        if app is None:
            raise AppUnavailable(f"no app with id {app_id!r}")
        sent = dict(headers or {})
        if caller:
            sent[CALLER_HEADER] = caller
        try:
            async with asyncio.timeout(timeout_s):
                if _plain(path):
                    return await _call_asgi(app, app_id, method, path, sent, json_body, content,
                                            params)
                response = await self._clients[app_id].request(
                    method, path, json=json_body, content=content, headers=sent, params=params)
        except TimeoutError as exc:
            raise AppUnavailable(f"{app_id} did not answer within {timeout_s}s") from exc
        return InvokeResponse(response.status_code, response.content, dict(response.headers))

    async def _deliver(self, app_id: str, route: str, event: dict[str, Any]) -> DeliveryResult:
        headers = {"content-type": "application/cloudevents+json"}
        if event.get("correlationid"):
            headers["X-Correlation-ID"] = str(event["correlationid"])
        if event.get("traceparent"):
            headers["traceparent"] = str(event["traceparent"])
        response = await self.call(app_id, "POST", route, content=json.dumps(event).encode(),
                                   headers=headers, caller=None, timeout_s=60.0)
        return DeliveryResult(response.status, response.body)

    async def _fire_binding(self, app_id: str, route: str) -> int:
        response = await self.call(app_id, "POST", route, content=b"", timeout_s=300.0)
        return response.status


def _plain(path: str) -> bool:
    return (path.startswith("/") and "/." not in path and "//" not in path
            and _PLAIN_PATH.issuperset(path))


def _header(value: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _encoding_of(headers: list[tuple[bytes, bytes]]) -> str:
    """As httpx reads response headers: ASCII, else UTF-8, else Latin-1."""
    for encoding in ("ascii", "utf-8"):
        try:
            for key, value in headers:
                key.decode(encoding)
                value.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return "latin-1"


async def _call_asgi(app: ASGIApp, app_id: str, method: str, path: str, headers: dict[str, str],
                     json_body: Any, content: bytes | None, params: Any) -> InvokeResponse:
    """One request straight into the app's ASGI callable: the scope, body and answer httpx's
    ASGITransport would give it, without building client-side request and response objects
    (those cost more than the app's own routing for the small calls that make up a run)."""
    raw: list[tuple[bytes, bytes]] = [(b"host", app_id.encode()), (b"accept", b"*/*")]
    if json_body is not None:
        # As httpx encodes `json=`: compact, UTF-8, no NaN.
        content = json.dumps(json_body, ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode()
        raw.append((b"content-type", b"application/json"))
    body = content or b""
    if body or method in ("POST", "PUT", "PATCH"):
        raw.append((b"content-length", str(len(body)).encode()))
    names = {name for name, _ in raw}
    for name, value in headers.items():
        key = name.lower().encode("ascii")
        if key in names:
            raw = [(k, v) for k, v in raw if k != key]
        raw.append((key, _header(value)))
    query = str(httpx.QueryParams(params)).encode("ascii") if params else b""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "headers": raw, "scheme": "http", "path": unquote(path), "raw_path": path.encode("ascii"),
        "query_string": query, "server": (app_id, None), "client": CLIENT, "root_path": "",
    }
    status: int | None = None
    answer: list[tuple[bytes, bytes]] = []
    parts: list[bytes] = []
    sent_body = False
    complete = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent_body
        if sent_body:
            await complete.wait()
            return {"type": "http.disconnect"}
        sent_body = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status, answer
        if message["type"] == "http.response.start":
            status, answer = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk and method != "HEAD":
                parts.append(chunk)
            if not message.get("more_body", False):
                complete.set()

    await app(scope, receive, send)
    assert status is not None and complete.is_set(), "the app did not finish its response"
    found: dict[str, str] = {}
    encoding = _encoding_of(answer)
    for raw_name, raw_value in answer:
        name = raw_name.decode(encoding).lower()
        text = raw_value.decode(encoding)
        found[name] = f"{found[name]}, {text}" if name in found else text
    return InvokeResponse(status, b"".join(parts), found)


class EmbeddedRuntime:
    """One app's view of the host (the `Runtime` port)."""

    def __init__(self, host: EmbeddedHost, app_id: str) -> None:
        self.host = host
        self.app_id = app_id

    async def invoke(self, app_id: str, method: str, path: str, *, json_body: Any = None,
                     content: bytes | None = None, headers: dict[str, str] | None = None,
                     params: Any = None, timeout_s: float = 10.0) -> InvokeResponse:
        return await self.host.call(app_id, method, path, caller=self.app_id, json_body=json_body,
                                    content=content, headers=headers, params=params,
                                    timeout_s=timeout_s)

    async def publish(self, pubsub: str, topic: str, event: dict[str, Any], *,
                      transient: bool = False) -> None:
        await self.host.broker.publish(pubsub, topic, event, transient=transient)

    async def get_state(self, store: str, key: str) -> StateItem | None:
        return self.host.state.get(store, key)

    async def save_state(self, store: str, key: str, value: bytes, *, etag: str | None = None,
                         ttl_s: int | None = None) -> None:
        await self.host.state.save(store, key, value, etag, ttl_s)

    async def delete_state(self, store: str, key: str, *, etag: str | None = None) -> None:
        await self.host.state.delete(store, key, etag)

    async def get_secret(self, store: str, key: str) -> str:
        try:
            return self.host.secrets.get(key)
        except SecretNotFound:
            raise
        except ValueError as exc:
            raise SecretNotFound(f"{store}/{key}: unreadable secret file") from exc

    async def close(self) -> None:
        return None
