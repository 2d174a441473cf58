"""The Runtime port over the app's own Dapr sidecar.

Configured the way the dapr SDK is, from the environment of the app process: DAPR_HTTP_PORT,
DAPR_GRPC_PORT (and DAPR_RUNTIME_HOST), and DAPR_API_TOKEN, the token this app presents to its
sidecar. Invocation goes over the sidecar's HTTP API (invocation.Invoker: one pooled session),
everything else over gRPC (the SDK's async DaprClient). Each runtime owns its clients; they are
created on first use, once the sidecar answers, so an app may start before its sidecar.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import grpc
from dapr.aio.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.clients.health import DaprHealth

from opsconductor_core.context import TRACEPARENT_HEADER, outgoing_headers, traceparent_var
from opsconductor_runtime.dapr.invocation import Invoker, request_headers
from opsconductor_runtime.interface import (
    AppUnavailable,
    ETagMismatch,
    InvokeResponse,
    PublishFailed,
    RuntimeError_,
    SecretNotFound,
    StateItem,
)

log = logging.getLogger("opsconductor.runtime.dapr")

CLOUDEVENTS_JSON = "application/cloudevents+json"
# Messages for pub/sub component `X` leave through component `X-publisher`: the same broker and
# topics, no subscriptions, so no subscription's reconnect can close the connection a publish
# waits on for its broker confirm (components/pubsub-rabbitmq/pubsub-publisher.yaml says why).
PUBLISHING_COMPONENT_SUFFIX = "-publisher"
# gRPC codes daprd uses for a lost optimistic-concurrency race.
_CONFLICT_CODES = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION})


def grpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status behind an SDK error (the SDK wraps some errors and chains others)."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "code", None)
        if callable(code):
            try:
                value = code()
            except Exception:
                value = None
            if isinstance(value, grpc.StatusCode):
                return value
        seen = seen.__cause__
    return None


def describe(exc: BaseException) -> str:
    """A one-line reason from an SDK error, without its multi-line gRPC debug string."""
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            text = details()
            if isinstance(text, str) and text:
                return text
        except Exception:  # noqa: S110 - fall back to the plain message below
            pass
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class TraceContext(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends the W3C traceparent in force with every gRPC call, so the sidecar continues the
    caller's trace (and stamps it on the events it publishes) instead of starting a new one."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        traceparent = traceparent_var.get()
        if traceparent:
            metadata = [*(details.metadata or ()), (TRACEPARENT_HEADER, traceparent)]
            details = details._replace(metadata=metadata)
        return await continuation(details, request)


class DaprRuntime:
    """One app's door to its sidecar (the `Runtime` port)."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self._client: DaprClient | None = None
        self._invoker: Invoker | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_env(cls, app_id: str) -> DaprRuntime:
        return cls(app_id)

    async def _connect(self) -> tuple[DaprClient, Invoker]:
        if self._client is None or self._invoker is None:
            async with self._lock:
                if self._client is None or self._invoker is None:
                    # The SDK's constructors wait for the sidecar synchronously; wait here
                    # first, off the event loop, so they find it ready.
                    try:
                        await asyncio.to_thread(DaprHealth.wait_for_sidecar)
                    except TimeoutError as exc:
                        raise AppUnavailable(f"{self.app_id}: the Dapr sidecar is not up") from exc
                    self._invoker = Invoker()
                    self._client = DaprClient(interceptors=[TraceContext()])
        return self._client, self._invoker

    # -- service invocation ------------------------------------------------------------------
    async def invoke(self, app_id: str, method: str, path: str, *, json_body: Any = None,
                     content: bytes | None = None, headers: dict[str, str] | None = None,
                     params: dict[str, str] | list[tuple[str, str]] | None = None,
                     timeout_s: float = 10.0) -> InvokeResponse:
        _, invoker = await self._connect()
        body = content
        content_type = None
        if json_body is not None and content is None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        # The caller's context travels with the call; headers the caller set win.
        sent = request_headers(outgoing_headers() | (headers or {}), content_type)
        query = list(params.items()) if isinstance(params, dict) else params
        return await invoker.call(app_id, method, path, body=body, headers=sent, params=query,
                                  timeout_s=timeout_s)

    # -- pub/sub -----------------------------------------------------------------------------
    async def publish(self, pubsub: str, topic: str, event: dict[str, Any], *,
                      transient: bool = False) -> None:
        """Sent through `pubsub`'s publishing component (PUBLISHING_COMPONENT_SUFFIX) and received
        through `pubsub`. The envelope is sent as a CloudEvent, so the sidecar keeps its id,
        source, type and extensions (correlationid, actor, traceparent...) instead of wrapping it
        in its own. `transient` changes nothing here: the broker keeps every message."""
        # The relay publishes outside any request: the event's own trace context applies.
        trace = traceparent_var.set(event.get("traceparent") or traceparent_var.get())
        try:
            client, _ = await self._connect()
            await client.publish_event(pubsub_name=pubsub + PUBLISHING_COMPONENT_SUFFIX,
                                       topic_name=topic, data=json.dumps(event).encode(),
                                       data_content_type=CLOUDEVENTS_JSON)
        except AppUnavailable as exc:
            raise PublishFailed(str(exc)) from exc
        except Exception as exc:
            # Refused by the broker, by the component's publishing scopes, or the sidecar is
            # down: the outbox keeps the event and tries again.
            raise PublishFailed(f"{pubsub}/{topic}: {describe(exc)}") from exc
        finally:
            traceparent_var.reset(trace)

    # -- state -------------------------------------------------------------------------------
    async def get_state(self, store: str, key: str) -> StateItem | None:
        client, _ = await self._connect()
        try:
            response = await client.get_state(store, key)
        except Exception as exc:
            raise RuntimeError_(f"state store {store}: {describe(exc)}") from exc
        # A missing key comes back as an empty value without an ETag.
        if not response.etag and not response.data:
            return None
        return StateItem(key, bytes(response.data), response.etag)

    async def save_state(self, store: str, key: str, value: bytes, *, etag: str | None = None,
                         ttl_s: int | None = None) -> None:
        client, _ = await self._connect()
        # etag "" means "only if absent": first-write concurrency without an ETag.
        options = StateOptions(concurrency=Concurrency.first_write) if etag is not None else None
        metadata = {"ttlInSeconds": str(int(ttl_s))} if ttl_s else {}
        try:
            await client.save_state(store, key, value, etag=etag or None, options=options,
                                    state_metadata=metadata)
        except Exception as exc:
            code = grpc_code(exc)
            if etag and code in (*_CONFLICT_CODES, grpc.StatusCode.INVALID_ARGUMENT):
                raise ETagMismatch(key) from exc
            # Stores report a lost "only if absent" race in their own words: look again.
            if etag == "" and await self.get_state(store, key) is not None:
                raise ETagMismatch(key) from exc
            raise RuntimeError_(f"state store {store}: {describe(exc)}") from exc

    async def delete_state(self, store: str, key: str, *, etag: str | None = None) -> None:
        client, _ = await self._connect()
        options = StateOptions(concurrency=Concurrency.first_write) if etag else None
        try:
            await client.delete_state(store, key, etag=etag or None, options=options)
        except Exception as exc:
            if etag and grpc_code(exc) in (*_CONFLICT_CODES, grpc.StatusCode.INVALID_ARGUMENT):
                # Already gone is what the caller wanted (the embedded store agrees).
                if await self.get_state(store, key) is None:
                    return
                raise ETagMismatch(key) from exc
            raise RuntimeError_(f"state store {store}: {describe(exc)}") from exc

    # -- secrets -----------------------------------------------------------------------------
    async def get_secret(self, store: str, key: str) -> str:
        try:
            client, _ = await self._connect()
            response = await client.get_secret(store, key)
        except Exception as exc:
            raise SecretNotFound(f"{store}/{key}: {describe(exc)}") from exc
        values = dict(response.secret)
        # File and env stores answer {key: value}; a Kubernetes Secret may hold one other key.
        if key in values:
            return str(values[key])
        if len(values) == 1:
            return str(next(iter(values.values())))
        raise SecretNotFound(f"{store}/{key}")

    async def close(self) -> None:
        client, invoker = self._client, self._invoker
        self._client, self._invoker = None, None
        if invoker is not None:
            await invoker.close()
        if client is not None:
            await client.close()
