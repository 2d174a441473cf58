"""Fixtures: the gateway over a RecordingRuntime with small fake services mounted behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from opsconductor_core.tokens import (
    SigningKey,
    generate_private_pem,
    new_access_claims,
    sign,
    signing_key,
)
from opsconductor_gateway.config import Settings
from opsconductor_gateway.main import create_app
from opsconductor_testing.runtime import RecordingRuntime

ALLOWED_ORIGIN = "https://ops.example.com"
CLIENT_ADDRESS = "203.0.113.7"
API_TOKEN = "opsc_apitoken_valid"
ISSUER = "opsconductor"
AUDIENCE = "opsconductor-api"


class FakeService:
    """A service that answers /healthz and echoes every other request it receives."""

    def __init__(self, app_id: str, key: SigningKey | None = None) -> None:
        self.app_id = app_id
        self.calls: list[dict[str, Any]] = []
        self.healthy = True
        app = FastAPI()
        self.app = app

        @app.get("/healthz")
        async def healthz() -> Response:
            return JSONResponse({"status": "ok"}, status_code=200 if self.healthy else 503)

        @app.get("/readyz")
        async def readyz() -> Response:
            return JSONResponse({"status": "ready"}, status_code=200 if self.healthy else 503)

        if key is not None:
            @app.get("/auth/jwks")
            async def jwks() -> dict[str, Any]:
                return {"keys": [key.public_jwk]}

            @app.get("/dapr/subscribe")
            async def subscriptions() -> list[dict[str, Any]]:
                return []

            @app.post("/internal/api-tokens/introspect")
            async def introspect(request: Request) -> dict[str, Any]:
                body = await request.json()
                if body.get("token") != API_TOKEN:
                    return {"active": False}
                return {"active": True, "user_id": "api-user", "username": "robot",
                        "permissions": ["jobs:read"], "roles": [], "token_id": "t1",
                        "expires_at": None}

        @app.api_route("/{path:path}",
                       methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                       include_in_schema=False)
        async def echo(request: Request, path: str) -> Response:
            body = await request.body()
            call = {
                "app_id": app_id,
                "method": request.method,
                "path": request.url.path,
                "raw_path": request.scope["raw_path"].decode(),
                "query": [list(item) for item in request.query_params.multi_items()],
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            }
            self.calls.append(call)
            headers = {"X-Internal-Secret": "not-for-clients", "ETag": '"v1"'}
            if path.endswith("/made"):
                headers["Location"] = "/users/123"
                return JSONResponse(call, status_code=201, headers=headers)
            return JSONResponse(call, headers=headers)


@pytest.fixture(scope="session")
def key() -> SigningKey:
    return signing_key(generate_private_pem())


@pytest.fixture
def auth_service(key: SigningKey) -> FakeService:
    return FakeService("auth", key)


@pytest.fixture
def users_service() -> FakeService:
    return FakeService("users")


@pytest.fixture
def runtime(auth_service: FakeService, users_service: FakeService) -> RecordingRuntime:
    runtime = RecordingRuntime(app_id="gateway")
    runtime.mount("auth", auth_service.app)
    runtime.mount("users", users_service.app)
    return runtime


@pytest.fixture
def fake_services(runtime: RecordingRuntime, key: SigningKey
                  ) -> Callable[[list[str]], dict[str, FakeService]]:
    """Mount an echoing fake under each app-id (auth keeps serving the JWKS)."""

    def mount(app_ids: list[str]) -> dict[str, FakeService]:
        fakes = {}
        for app_id in app_ids:
            fakes[app_id] = FakeService(app_id, key if app_id == "auth" else None)
            runtime.mount(app_id, fakes[app_id].app)
        return fakes

    return mount


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "services": ["auth", "users"],
            "cors_origins": [ALLOWED_ORIGIN],
            "rate_per_address": 0,
            "rate_per_user": 0,
            "frontend_dir": tmp_path / "no-frontend-here",
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def make_client(runtime: RecordingRuntime, make_settings: Callable[..., Settings]
                ) -> Callable[..., httpx.AsyncClient]:
    def build(*, scheme: str = "http", client: tuple[str, int] = (CLIENT_ADDRESS, 40000),
              **overrides: Any) -> httpx.AsyncClient:
        app = create_app(runtime, make_settings(**overrides))
        transport = httpx.ASGITransport(app=app, client=client)
        return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://gateway")

    return build


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


@pytest.fixture
def make_token(key: SigningKey) -> Callable[..., str]:
    def build(subject: str = "user-1", *, ttl_s: int = 300, audience: str = AUDIENCE,
              signer: SigningKey | None = None) -> str:
        claims = new_access_claims(subject=subject, issuer=ISSUER, audience=audience, ttl_s=ttl_s,
                                   extra={"name": subject, "perms": ["users:read"],
                                          "roles": ["viewer"]})
        return sign(signer or key, claims)

    return build


@pytest.fixture
def auth(make_token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token()}"}


RawCall = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]


@pytest.fixture
def raw_call(runtime: RecordingRuntime, make_settings: Callable[..., Settings]) -> RawCall:
    """Drive the ASGI app with an exact raw path (HTTP clients normalise '..' away)."""
    app = create_app(runtime, make_settings())

    async def call(method: str, raw_path: bytes, headers: dict[str, str] | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "root_path": "",
            "path": unquote(raw_path.decode("latin-1")), "raw_path": raw_path,
            "query_string": b"", "client": (CLIENT_ADDRESS, 40000), "server": ("gateway", 80),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        start = sent[0]
        response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])

    return call


@pytest.fixture
def in_process() -> Callable[[Any], httpx.AsyncClient]:
    """A client that reaches the app the way the embedded host does (in-process, port 0)."""

    def build(app: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
        return httpx.AsyncClient(transport=transport, base_url="http://gateway")

    return build
