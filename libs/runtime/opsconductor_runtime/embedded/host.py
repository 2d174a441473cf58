"""The embedded host: registers apps, routes invocations to their real HTTP routes in-process,
and owns the broker, state store, secret store and cron bindings they share."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp

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
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
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
        client = self._clients.get(app_id)
        if client is None:
            raise AppUnavailable(f"no app with id {app_id!r}")
        sent = dict(headers or {})
        if caller:
            sent[CALLER_HEADER] = caller
        try:
            async with asyncio.timeout(timeout_s):
                response = await client.request(method, path, json=json_body, content=content,
                                                headers=sent, params=params)
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

    async def publish(self, pubsub: str, topic: str, event: dict[str, Any]) -> None:
        await self.host.broker.publish(pubsub, topic, event)

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
