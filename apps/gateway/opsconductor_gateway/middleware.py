"""Pure-ASGI layers on the hot path: security headers, the per-address rate limit and CORS, and
the runtime-only routes."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsconductor_core.problems import problem_response
from opsconductor_gateway.ratelimit import TokenBuckets

HSTS = b"max-age=63072000; includeSubDomains"

CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
CORS_REQUEST_HEADERS = ("authorization", "content-type", "accept", "if-match", "if-none-match",
                        "last-event-id", "x-correlation-id", "traceparent")
CORS_EXPOSED_HEADERS = b"X-Correlation-ID, Retry-After, Location, ETag, WWW-Authenticate, " \
                       b"Content-Disposition"
PREFLIGHT_MAX_AGE = b"600"

# Routes only the runtime calls: subscription discovery and event deliveries.
RUNTIME_PREFIXES = ("/dapr/", "/events/")
DELIVERY_TOKEN_HEADER = b"dapr-api-token"


def from_runtime(scope: Scope, token: str | None) -> bool:
    """Did the runtime send this request (and not a client of the public port)?"""
    if token:
        presented = next((v for k, v in scope["headers"] if k == DELIVERY_TOKEN_HEADER), b"")
        return hmac.compare_digest(presented, token.encode())
    # The embedded host calls apps in-process: its ASGI transport reports peer port 0 (no TCP
    # connection has it) and no server `state` (ASGI servers add one to every socket request).
    client = scope.get("client")
    return client is not None and client[1] == 0 and "state" not in scope


def forwarded_proto(scope: Scope, trust_forwarded_proto: bool) -> str:
    """http or https as the client used it (a trusted proxy's X-Forwarded-Proto wins)."""
    if trust_forwarded_proto:
        for key, value in scope["headers"]:
            if key == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",", 1)[0].strip().lower()
                if proto in ("http", "https"):
                    return proto
                break
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


class SecurityHeadersMiddleware:
    """Adds the browser-hardening headers to every response, errors and static files included.
    HSTS only when the request arrived over TLS (sending it over plain HTTP is meaningless)."""

    def __init__(self, app: ASGIApp, *, content_security_policy: str,
                 trust_forwarded_proto: bool = False) -> None:
        self.app = app
        self.trust_forwarded_proto = trust_forwarded_proto
        self.plain = [
            (b"content-security-policy", content_security_policy.encode("latin-1")),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        self.tls = [*self.plain, (b"strict-transport-security", HSTS)]
        self.names = frozenset(name for name, _ in self.tls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = forwarded_proto(scope, self.trust_forwarded_proto) == "https"
        added = self.tls if tls else self.plain
        names = self.names

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                headers.extend(added)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class EdgePolicyMiddleware:
    """Per-address token bucket on every request, then CORS with an exact allow-list.

    A listed origin is echoed back; an unlisted one (or "null") never is. Preflights are answered
    here without authentication; a refused preflight gets a 403 problem and no CORS headers.

    The runtime's routes (event deliveries) answer only the runtime, which presents
    `runtime_token` (Dapr's app token) or, without one, calls in-process; they skip the limit
    (a busy execution delivers many events) and CORS. Anyone else is told nothing is there.
    """

    def __init__(self, app: ASGIApp, *, cors_origins: list[str],
                 client_limit: TokenBuckets, runtime_token: str | None = None) -> None:
        self.app = app
        self.runtime_token = runtime_token
        self.origins = frozenset(o.encode("latin-1") for o in cors_origins)
        self.limit = client_limit
        self.allowed_methods = frozenset(CORS_METHODS)
        self.allowed_headers = frozenset(CORS_REQUEST_HEADERS)
        self.preflight_headers = [
            (b"access-control-allow-methods", ", ".join(CORS_METHODS).encode()),
            (b"access-control-allow-headers", ", ".join(CORS_REQUEST_HEADERS).encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"vary", b"Origin"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(RUNTIME_PREFIXES):
            if from_runtime(scope, self.runtime_token):
                await self.app(scope, receive, send)
            else:
                await problem_response(404, "Not found", "Nothing at this path",
                                       slug="not-found")(scope, receive, send)
            return
        origin = request_method = request_headers = None
        for key, value in scope["headers"]:
            if key == b"origin":
                origin = value
            elif key == b"access-control-request-method":
                request_method = value
            elif key == b"access-control-request-headers":
                request_headers = value
        allowed = origin is not None and origin in self.origins
        out = send
        if origin is not None:
            extra = [(b"vary", b"Origin")]
            if allowed:
                extra += [(b"access-control-allow-origin", origin),
                          (b"access-control-expose-headers", CORS_EXPOSED_HEADERS)]

            async def send_with_cors(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            out = send_with_cors

        if self.limit.enabled:
            client = scope.get("client")
            wait = self.limit.take(client[0] if client else "unknown")
            if wait:
                response = problem_response(
                    429, "Too many requests", "Too many requests from this address; slow down",
                    slug="rate-limited", headers={"Retry-After": str(wait)})
                await response(scope, receive, out)
                return

        if scope["method"] == "OPTIONS" and origin is not None and request_method is not None:
            await self._preflight(scope, receive, send, origin if allowed else None,
                                  request_method, request_headers)
            return
        await self.app(scope, receive, out)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, origin: bytes | None,
                         method: bytes, headers: bytes | None) -> None:
        wanted = {h.strip().lower() for h in (headers or b"").decode("latin-1").split(",")} - {""}
        if (origin is None or method.decode("latin-1").upper() not in self.allowed_methods
                or not wanted <= self.allowed_headers):
            response = problem_response(403, "Forbidden", "Cross-origin request not allowed",
                                        slug="cors-forbidden")
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"access-control-allow-origin", origin), *self.preflight_headers]})
        await send({"type": "http.response.body", "body": b""})
