"""The gateway: the one origin the browser talks to. Stateless (no database, no outbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.routing import Match, Route
from starlette.types import Scope

from opsconductor_contracts.security import runtime_authenticator
from opsconductor_core.app import create_service_app
from opsconductor_gateway.api import Gateway
from opsconductor_gateway.config import Settings
from opsconductor_gateway.edge_auth import EdgeAuthenticator
from opsconductor_gateway.events import register_subscriptions
from opsconductor_gateway.frontend import SinglePageApp, placeholder
from opsconductor_gateway.health import ServiceProbes
from opsconductor_gateway.live import LiveHub
from opsconductor_gateway.middleware import EdgePolicyMiddleware, SecurityHeadersMiddleware
from opsconductor_gateway.ratelimit import TokenBuckets
from opsconductor_gateway.routing import API_PREFIX
from opsconductor_gateway.sse import ExecutionEvents
from opsconductor_runtime.factory import runtime_or_default
from opsconductor_runtime.interface import Runtime

APP_ID = "gateway"
PROXIED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class LabelledRoute(Route):
    """A plain route that names itself in the scope, so metrics are labelled by template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime, owns_runtime = runtime_or_default(runtime, APP_ID)
    authenticator = runtime_authenticator(runtime, settings)
    gateway = Gateway(runtime, settings,
                      EdgeAuthenticator(authenticator, cache_s=settings.auth_cache_s))
    probes = ServiceProbes(runtime, settings.services, settings.health_timeout_s)
    hub = LiveHub(settings.sse_queue_size)
    execution_events = ExecutionEvents(gateway, hub, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_runtime:
                await runtime.close()

    # The gateway is the public edge: a sidecar app token guards only the routes the runtime
    # calls (event deliveries), never the whole app.
    delivery_token = settings.delivery_token or settings.app_api_token
    app = create_service_app(
        APP_ID, settings.model_copy(update={"app_api_token": None}), lifespan=lifespan,
        health=probes.healthz, ready=probes.readyz,
        description="Routing, edge authentication, rate limits, security headers, the web UI")
    app.state.runtime = runtime
    app.state.authenticator = authenticator
    app.state.settings = settings
    app.state.live_hub = hub
    # Before the catch-all routes and the frontend mount, which would otherwise shadow them.
    register_subscriptions(app, hub)

    # Plain Starlette routes: no dependency solving or schema work on the hot path.
    router = app.router
    # API clients get a 404 problem for a near-miss path, never a redirect.
    router.redirect_slashes = False
    router.routes += [
        LabelledRoute(f"{API_PREFIX}/openapi", gateway.openapi_index, methods=["GET"]),
        LabelledRoute(f"{API_PREFIX}/openapi/{{app_id}}.json", gateway.openapi_document,
                      methods=["GET"]),
        # Served here, not forwarded: the live stream fans out from this replica's hub.
        LabelledRoute(f"{API_PREFIX}/executions/{{execution_id}}/events", execution_events.stream,
                      methods=["GET"]),
        LabelledRoute(f"{API_PREFIX}/{{path:path}}", gateway.proxy, methods=PROXIED_METHODS),
    ]
    frontend_dir = settings.resolved_frontend_dir()
    if frontend_dir is not None:
        app.mount("/", SinglePageApp(frontend_dir), name="frontend")
    else:
        router.routes.append(LabelledRoute("/", placeholder, methods=["GET", "HEAD"]))

    # Outermost: security headers on every response (including the core layer's 413s).
    # Inside core's EdgeMiddleware (so 429s and preflights carry X-Correlation-ID): the
    # per-address limit and CORS.
    app.user_middleware.insert(0, Middleware(
        SecurityHeadersMiddleware, content_security_policy=settings.content_security_policy,
        trust_forwarded_proto=settings.trust_forwarded_proto))
    app.user_middleware.append(Middleware(
        EdgePolicyMiddleware, cors_origins=settings.cors_origins,
        client_limit=TokenBuckets(settings.rate_per_address, settings.burst_per_address),
        runtime_token=delivery_token))
    return app
