"""The public API surface: /api/v1/* forwarded to the owning service, and the OpenAPI index."""

from __future__ import annotations

import logging

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from opsconductor_core.context import outgoing_headers
from opsconductor_core.problems import NotFound, ServiceUnavailable, TooManyRequests, Unauthorized
from opsconductor_core.security import Principal, bearer_token
from opsconductor_gateway.activity import UserActivity
from opsconductor_gateway.config import Settings
from opsconductor_gateway.edge_auth import EdgeAuthenticator
from opsconductor_gateway.exceptions import PathRejected, UpstreamFailed, UpstreamTimeout
from opsconductor_gateway.frontend import is_reserved_path
from opsconductor_gateway.middleware import forwarded_proto
from opsconductor_gateway.ratelimit import TokenBuckets
from opsconductor_gateway.routing import (
    API_PREFIX,
    PUBLIC_ROUTES,
    SEGMENT_TO_APP,
    first_segment,
    is_suspicious,
    raw_path_of,
    upstream_path,
)
from opsconductor_runtime.interface import AppUnavailable, InvokeResponse, Runtime

log = logging.getLogger("opsconductor.gateway")

# Request headers a service may act on; everything else (cookies, X-Forwarded-*, hop-by-hop)
# stays at the edge.
FORWARDED_REQUEST_HEADERS = {
    b"authorization": "Authorization",
    b"content-type": "Content-Type",
    b"accept": "Accept",
    b"if-match": "If-Match",
    b"if-none-match": "If-None-Match",
    b"last-event-id": "Last-Event-ID",
}
# Response headers passed back to the client.
RETURNED_RESPONSE_HEADERS = frozenset({
    "content-type", "retry-after", "location", "etag", "www-authenticate",
    "content-disposition", "cache-control", "last-modified",
})


class Gateway:
    """Forwards public API calls to the services through the runtime."""

    def __init__(self, runtime: Runtime, settings: Settings, auth: EdgeAuthenticator) -> None:
        self.runtime = runtime
        self.settings = settings
        self.auth = auth
        self.user_limit = TokenBuckets(settings.rate_per_user, settings.burst_per_user)
        self.activity = UserActivity(runtime)
        routable = set(SEGMENT_TO_APP.values())
        self.documented = [s for s in settings.services if s in routable]

    async def authenticate(self, request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise Unauthorized()
        principal = await self.auth.authenticate(token)
        wait = self.user_limit.take(principal.subject)
        if wait:
            raise TooManyRequests("Too many requests for this user; slow down", retry_after_s=wait)
        return principal

    async def proxy(self, request: Request) -> Response:
        scope = request.scope
        raw_path = raw_path_of(scope)
        if is_suspicious(raw_path):
            raise PathRejected("The path contains forbidden sequences")
        path: str = request.path_params["path"]
        segment = first_segment(path)
        app_id = SEGMENT_TO_APP.get(segment)
        if app_id is None:
            raise NotFound("No API at this path")
        principal = None
        if (scope["method"], path) not in PUBLIC_ROUTES:
            principal = await self.authenticate(request)

        headers = self.forwarded_headers(scope)
        body = await request.body()
        params = request.query_params.multi_items() if scope.get("query_string") else None

        upstream = await self.invoke(app_id, scope["method"], upstream_path(raw_path),
                                      content=body or None, headers=headers, params=params)
        task = None
        if (principal is not None and upstream.status < 400
                and self.activity.due(principal.subject)):
            task = BackgroundTask(self.activity.publish, principal.subject)
        return Response(upstream.body, status_code=upstream.status,
                        headers=returned_headers(upstream), background=task)

    def forwarded_headers(self, scope: Scope) -> dict[str, str]:
        """What a service sees of the client's request: the headers it may act on, the
        request's context, and the real client address."""
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = FORWARDED_REQUEST_HEADERS.get(key)
            if name is not None:
                headers[name] = value.decode("latin-1")
        headers.update(outgoing_headers())
        client = scope.get("client")
        # Overwrites whatever the client claimed: services trust this for per-address limits.
        headers["X-Forwarded-For"] = client[0] if client else "unknown"
        headers["X-Forwarded-Proto"] = forwarded_proto(scope, self.settings.trust_forwarded_proto)
        return headers

    async def openapi_index(self, request: Request) -> Response:
        await self.authenticate(request)
        return JSONResponse({s: f"{API_PREFIX}/openapi/{s}.json" for s in self.documented})

    async def openapi_document(self, request: Request) -> Response:
        await self.authenticate(request)
        app_id = request.path_params["app_id"]
        if app_id not in self.documented:
            raise NotFound("No such service")
        upstream = await self.invoke(app_id, "GET", "/openapi.json",
                                      headers=outgoing_headers())
        if not upstream.ok:
            raise ServiceUnavailable(f"The {app_id} service did not return its OpenAPI document")
        return JSONResponse(public_openapi(upstream.json()))

    async def invoke(self, app_id: str, method: str, path: str, *, content: bytes | None = None,
                     headers: dict[str, str] | None = None,
                     params: dict[str, str] | list[tuple[str, str]] | None = None,
                     timeout_s: float | None = None) -> InvokeResponse:
        timeout = self.settings.upstream_timeout_s if timeout_s is None else timeout_s
        try:
            return await self.runtime.invoke(app_id, method, path, content=content,
                                             headers=headers, params=params, timeout_s=timeout)
        except AppUnavailable as exc:
            # The reason (sidecar error code: breaker open, app unhealthy, access denied...) is
            # what tells an overload from an outage; it never holds request data.
            log.warning("service unavailable", extra={"app_id": app_id, "reason": str(exc)})
            raise ServiceUnavailable(f"The {app_id} service is unavailable") from None
        except TimeoutError:
            log.warning("service timed out", extra={"app_id": app_id})
            raise UpstreamTimeout(f"The {app_id} service did not answer in time") from None
        except Exception:
            # Rendered here, not by the server's last-resort handler, so the answer still gets
            # the edge headers (security headers, correlation id, CORS).
            log.exception("service call failed", extra={"app_id": app_id})
            raise UpstreamFailed(f"The {app_id} service call failed") from None


def returned_headers(upstream: InvokeResponse) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in upstream.headers.items():
        name = key.lower()
        if name in RETURNED_RESPONSE_HEADERS:
            headers[name] = value
    location = headers.get("location")
    # Services see paths without /api/v1; give the client the public one.
    if location and location.startswith("/") and not location.startswith(API_PREFIX + "/"):
        headers["location"] = API_PREFIX + location
    return headers


def public_openapi(document: dict) -> dict:
    """A service's schema as the public sees it: under /api/v1, without internal, runtime
    (/dapr/...) or event-delivery routes, which the gateway never forwards."""
    document["servers"] = [{"url": API_PREFIX}]
    paths = document.get("paths") or {}
    document["paths"] = {p: v for p, v in paths.items() if not is_reserved_path(p)}
    return document
