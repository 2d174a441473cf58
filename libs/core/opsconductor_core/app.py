"""The app factory every service uses: problem+json, context, size cap, health, readiness, metrics."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsconductor_core import __version__
from opsconductor_core.context import (
    CORRELATION_HEADER,
    TRACEPARENT_HEADER,
    accept_correlation_id,
    accept_traceparent,
    correlation_id_var,
    traceparent_var,
)
from opsconductor_core.problems import install_problem_handlers, problem_response
from opsconductor_core.settings import PlatformSettings

log = logging.getLogger("opsconductor.app")

ReadinessCheck = Callable[[], Awaitable[None]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class _BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """One pure-ASGI layer (cheap on the hot path): correlation id, traceparent, body cap, metrics."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, requests: Counter,
                 latency: Histogram) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cid = accept_correlation_id(headers.get(CORRELATION_HEADER.lower()))
        tp = accept_traceparent(headers.get(TRACEPARENT_HEADER))
        cid_token = correlation_id_var.set(cid)
        tp_token = traceparent_var.set(tp)
        started = time.perf_counter()
        status_holder = {"status": 500}
        response_started = False

        async def send_with_context(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_holder["status"] = message["status"]
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-correlation-id"]
                raw.append((b"x-correlation-id", cid.encode()))
                message["headers"] = raw
            await send(message)

        try:
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                await self._reject_large(scope, receive, send_with_context)
                return
            seen = 0
            cut_off = False

            async def capped_receive() -> Message:
                nonlocal seen, cut_off
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        cut_off = True
                        raise _BodyTooLarge()
                return message

            async def send_unless_cut_off(message: Message) -> None:
                # FastAPI turns the failed body read into its own 400; the caller gets our 413.
                if not (cut_off and not response_started):
                    await send_with_context(message)

            try:
                await self.app(scope, capped_receive, send_unless_cut_off)
            except Exception:
                if response_started:
                    raise
                if not cut_off:
                    # Rendered here, inside the request's context, so the 500 and its log line
                    # carry the correlation id (the outermost error middleware sees neither).
                    log.exception("unhandled error", extra={"path": scope.get("path")})
                    await problem_response(
                        500, "Internal error", "The server could not complete the request",
                        slug="internal", instance=scope.get("path"),
                    )(scope, receive, send_with_context)
                    return
            if cut_off and not response_started:
                await self._reject_large(scope, receive, send_with_context)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.requests.labels(scope["method"], template, str(status_holder["status"])).inc()
            self.latency.labels(scope["method"], template).observe(time.perf_counter() - started)
            correlation_id_var.reset(cid_token)
            traceparent_var.reset(tp_token)

    async def _reject_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(413, "Payload too large",
                                    f"The request body exceeds {self.max_body} bytes",
                                    slug="payload-too-large")
        await response(scope, receive, send)


class AppTokenMiddleware:
    """Only the app's own sidecar may call it: Dapr sends `dapr-api-token` (its APP_API_TOKEN)
    on every request it forwards. Health probes stay open; anything else without the token is
    refused before routing."""

    HEADER = b"dapr-api-token"

    def __init__(self, app: ASGIApp, *, token: str,
                 open_paths: frozenset[str] = frozenset({"/healthz", "/readyz"})) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        presented = next((v for k, v in scope["headers"] if k.lower() == self.HEADER), b"")
        if hmac.compare_digest(presented, self.token):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await problem_response(401, "Unauthorized",
                               "Only this service's sidecar may call it directly",
                               slug="app-token")(scope, receive, send)


def create_service_app(
    name: str,
    settings: PlatformSettings,
    *,
    routers: Sequence[APIRouter] = (),
    lifespan: Lifespan | None = None,
    readiness: Sequence[ReadinessCheck] = (),
    description: str = "",
    health: Callable[..., Awaitable[Any]] | None = None,
    ready: Callable[..., Awaitable[Any]] | None = None,
) -> FastAPI:
    """`health` / `ready`, when given, are endpoints that replace the default /healthz and
    /readyz (the gateway aggregates its services' health there)."""
    app = FastAPI(title=f"OpsConductor {name}", version=__version__, description=description,
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service_name = name
    app.state.readiness_checks = list(readiness)
    install_problem_handlers(app)

    registry = CollectorRegistry(auto_describe=True)
    requests = Counter("http_requests", "HTTP requests handled", ["method", "route", "status"],
                       registry=registry)
    latency = Histogram("http_request_duration_seconds", "HTTP request latency",
                        ["method", "route"], registry=registry)
    app.state.metrics_registry = registry

    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": name, "version": __version__}

    async def readyz(request: Request) -> Response:
        failures: dict[str, str] = {}
        for check in request.app.state.readiness_checks:
            try:
                await check()
            except Exception as exc:
                failures[getattr(check, "__name__", "check")] = type(exc).__name__
        if failures:
            return JSONResponse({"status": "unavailable", "service": name, "failures": failures},
                                status_code=503)
        return JSONResponse({"status": "ready", "service": name})

    app.add_api_route("/healthz", health or healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", ready or readyz, methods=["GET"], include_in_schema=False)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics_registry),
                        media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    app_token = getattr(settings, "app_api_token", None)
    if app_token:
        # Added first so it runs inside EdgeMiddleware: refusals carry the correlation id.
        app.add_middleware(AppTokenMiddleware, token=app_token)
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes,
                       requests=requests, latency=latency)
    return app

