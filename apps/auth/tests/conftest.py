"""Auth test harness: the real app (lifespan running) on SQLite and PostgreSQL, a recording
runtime at the runtime port, and a small fake of the users service's two internal routes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from opsconductor_auth.config import Settings
from opsconductor_auth.main import create_app
from opsconductor_contracts.components import JWT_SIGNING_KEY_SECRET
from opsconductor_contracts.permissions import BUILTIN_ROLES
from opsconductor_core.tokens import generate_private_pem
from opsconductor_testing.runtime import RecordingRuntime

PASSWORD = "correct horse battery staple"


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class FakeUser:
    id: str
    username: str
    password: str
    roles: list[str]
    active: bool = True

    @property
    def permissions(self) -> list[str]:
        return sorted({p for role in self.roles for p in BUILTIN_ROLES[role]})

    def identity(self) -> dict[str, Any]:
        return {"user_id": self.id, "username": self.username, "roles": self.roles,
                "permissions": self.permissions, "active": self.active}


class FakeUsers:
    """Answers POST /internal/credentials/verify and GET /internal/users/{id}/identity."""

    def __init__(self) -> None:
        self.by_id: dict[str, FakeUser] = {}
        self.app = FastAPI()

        @self.app.post("/internal/credentials/verify")
        async def verify(request: Request) -> Response:
            body = await request.json()
            for user in self.by_id.values():
                if user.username.lower() == str(body["username"]).lower():
                    if user.password == body["password"]:
                        return JSONResponse(user.identity())
            return JSONResponse({"detail": "invalid"}, status_code=401)

        @self.app.get("/internal/users/{user_id}/identity")
        async def identity(user_id: str) -> Response:
            user = self.by_id.get(user_id)
            if user is None:
                return JSONResponse({"detail": "not found"}, status_code=404)
            return JSONResponse(user.identity())

    def add(self, username: str, *, roles: tuple[str, ...] = ("operator",),
            password: str = PASSWORD, active: bool = True) -> FakeUser:
        user = FakeUser(str(uuid.uuid4()), username, password, list(roles), active)
        self.by_id[user.id] = user
        return user


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    runtime: RecordingRuntime
    users: FakeUsers
    settings: Settings
    seen_secrets: set[str] = field(default_factory=set)
    password: str = PASSWORD

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @staticmethod
    def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims of a JWT, unverified (for assertions only)."""
        header, payload, _ = token.split(".")
        return json.loads(b64decode(header)), json.loads(b64decode(payload))

    async def protected(self, token: str) -> int:
        """Status of a route of auth that needs a valid token."""
        return (await self.client.get("/auth/api-tokens", headers=self.bearer(token))).status_code

    async def login(self, username: str, password: str = PASSWORD,
                    **headers: str) -> httpx.Response:
        self.seen_secrets.add(password)
        response = await self.client.post("/auth/login",
                                          json={"username": username, "password": password},
                                          headers=headers)
        self.remember(response)
        return response

    async def tokens(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.login(username, password)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def remember(self, response: httpx.Response) -> None:
        """Collect every token handed out, so leak checks can look for them."""
        try:
            body = response.json()
        except ValueError:
            return
        if isinstance(body, dict):
            for name in ("access_token", "refresh_token", "token"):
                if isinstance(body.get(name), str):
                    self.seen_secrets.add(body[name])

    async def execute(self, statement: Any) -> None:
        """Change auth's tables directly (to age a token without waiting days)."""
        async with self.app.state.db.transaction() as session:
            await session.execute(statement)

    async def drained(self) -> list[dict[str, Any]]:
        """Wait until the outbox relay published everything committed so far."""
        relay = self.app.state.outbox_relay
        for _ in range(200):
            if await relay.pending() == 0:
                break
            await asyncio.sleep(0.02)
        assert await relay.pending() == 0, "outbox not drained"
        return [p.event for p in self.runtime.published]

    def private_pem(self) -> str:
        return self.runtime.secrets[JWT_SIGNING_KEY_SECRET]


MakeAuth = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_auth(database_url: str, tmp_path: Path) -> AsyncIterator[MakeAuth]:
    """Start an auth app; pass `runtime=`/`users=` to start a second replica on the same ones."""
    async with AsyncExitStack() as stack:

        async def make(*, runtime: RecordingRuntime | None = None,
                       users: FakeUsers | None = None, **overrides: Any) -> Harness:
            users = users or FakeUsers()
            if runtime is None:
                runtime = RecordingRuntime(app_id="auth",
                                           secrets={JWT_SIGNING_KEY_SECRET: generate_private_pem()})
                runtime.mount("users", users.app)
            settings = Settings(database_url=database_url, data_dir=tmp_path, **overrides)
            app = create_app(runtime, settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://auth"))
            return Harness(app, client, runtime, users, settings)

        yield make


@pytest.fixture
async def auth(make_auth: MakeAuth) -> Harness:
    return await make_auth()


@pytest.fixture
def no_secret_in() -> Callable[[Harness, Any], None]:
    def check(harness: Harness, blob: Any) -> None:
        text = blob if isinstance(blob, str) else json.dumps(blob, default=str)
        for secret in harness.seen_secrets | {harness.private_pem()}:
            assert secret not in text
            assert hashlib.sha256(secret.encode()).hexdigest() not in text
        # No piece of the private key either (its base64 body lines).
        for line in harness.private_pem().splitlines()[1:-1]:
            assert line not in text

    return check
