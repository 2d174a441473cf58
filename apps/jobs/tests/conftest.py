"""Fixtures for the jobs service: the app with its lifespan, real signed tokens, and (unit tests
only) small stand-ins for the targets and executor services mounted at the runtime port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from opsconductor_contracts.jobspec import RunRequest
from opsconductor_contracts.permissions import ALL_PERMISSIONS
from opsconductor_core.tokens import SigningKey, generate_private_pem, signing_key
from opsconductor_db.database import ServiceDatabase
from opsconductor_jobs.config import Settings
from opsconductor_jobs.main import MIGRATIONS_DIR, create_app
from opsconductor_testing.databases import migrated_database
from opsconductor_testing.runtime import RecordingRuntime
from opsconductor_testing.service_app import (
    OutboxReader,
    TokenMinter,
    database_dump,
    serving,
    trust_test_key,
)

AUTHOR = ["jobs:read", "jobs:write", "jobs:run"]
VIEWER = ["jobs:read"]
RUNNER = ["jobs:read", "jobs:run"]
APPROVER = ["jobs:read", "jobs:approve_dangerous"]


@pytest.fixture(scope="session")
def signing() -> SigningKey:
    return signing_key(generate_private_pem())


@pytest.fixture
def runtime() -> RecordingRuntime:
    return RecordingRuntime(app_id="jobs")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "data", outbox_paused=True)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    """A migrated database without the app, for repository tests."""
    async with migrated_database(database_url, MIGRATIONS_DIR) as database:
        yield database


@dataclass
class FakeTarget:
    target_id: str
    name: str
    protocol: str = "ssh"
    tags: tuple[str, ...] = ()


@dataclass
class FakeTargets:
    """The targets service's resolve route, over an in-memory inventory (unit tests only)."""

    inventory: list[FakeTarget] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, protocol: str = "ssh", tags: tuple[str, ...] = ()) -> FakeTarget:
        target = FakeTarget(str(uuid.uuid4()), name, protocol, tags)
        self.inventory.append(target)
        return target

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/internal/targets/resolve")
        async def resolve(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.calls.append(body)
            ids, tags = list(body.get("ids", [])), set(body.get("tags", []))
            chosen = [t for t in self.inventory
                      if t.target_id in ids or (tags and tags <= set(t.tags))]
            known = {t.target_id for t in self.inventory}
            return {"items": [{"target_id": t.target_id, "name": t.name, "protocol": t.protocol}
                              for t in sorted(chosen, key=lambda t: t.name)],
                    "missing": [i for i in ids if i not in known]}

        return app


@dataclass
class FakeExecutor:
    """The executor's run route: keeps every RunRequest (unit tests only)."""

    runs: list[RunRequest] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    by_key: dict[str, str] = field(default_factory=dict)
    refuse: tuple[int, dict[str, Any]] | None = None

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/internal/executions")
        async def create(request: Request) -> JSONResponse:
            if self.refuse is not None:
                status, problem = self.refuse
                return JSONResponse(problem, status_code=status,
                                    media_type="application/problem+json")
            body = await request.body()
            self.raw.append(body)
            run = RunRequest.model_validate_json(body)
            if run.idempotency_key and run.idempotency_key in self.by_key:
                return JSONResponse({"execution_id": self.by_key[run.idempotency_key]})
            self.runs.append(run)
            execution_id = str(uuid.uuid4())
            if run.idempotency_key:
                self.by_key[run.idempotency_key] = execution_id
            return JSONResponse({"execution_id": execution_id}, status_code=201)

        return app


@dataclass
class FakeAuth:
    """The auth service's API-token introspection (unit tests only)."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/internal/api-tokens/introspect")
        async def introspect(request: Request) -> dict[str, Any]:
            token = (await request.json()).get("token", "")
            return self.tokens.get(token, {"active": False})

        return app


@dataclass
class World(OutboxReader):
    """The running app plus helpers to mint tokens, make jobs and read events."""

    app: Any
    client: httpx.AsyncClient
    runtime: RecordingRuntime
    signing: SigningKey
    settings: Settings
    targets: FakeTargets
    executor: FakeExecutor
    auth_service: FakeAuth
    minter: TokenMinter
    bodies: list[str] = field(default_factory=list)  # every response body, for leak checks
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    author = AUTHOR
    viewer = VIEWER
    runner = RUNNER
    approver = APPROVER

    def auth(self, perms: list[str] | None = None, *, user: str | None = None,
             roles: list[str] | None = None) -> dict[str, str]:
        perms = list(ALL_PERMISSIONS) if perms is None else perms
        token = self.minter.token(user or self.user_id, perms=perms, roles=roles)
        return {"Authorization": f"Bearer {token}"}

    def api_token(self, perms: list[str], *, user: str | None = None,
                  roles: list[str] | None = None) -> dict[str, str]:
        """An API token (not a JWT): the auth stand-in answers its introspection."""
        token = f"opsc_{uuid.uuid4().hex}"
        self.auth_service.tokens[token] = {
            "active": True, "user_id": user or self.user_id, "username": "robot",
            "permissions": perms, "roles": roles or [], "token_id": str(uuid.uuid4())}
        return {"Authorization": f"Bearer {token}"}

    async def create(self, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("name", f"job-{uuid.uuid4().hex[:8]}")
        body.setdefault("steps", [{"name": "hello", "kind": "command", "command": "echo hello"}])
        response = await self.client.post("/jobs", json=body,
                                          headers=headers or self.auth(AUTHOR))
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def run(self, job_id: str, body: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(f"/jobs/{job_id}/run", json=body,
                                      headers=headers or self.auth(AUTHOR))

    @staticmethod
    def is_problem(response: httpx.Response, status: int) -> bool:
        return (response.status_code == status
                and response.headers["content-type"].startswith("application/problem+json")
                and response.json()["status"] == status)

    async def database_dump(self) -> bytes:
        return await database_dump(self.app.state.db)


WorldFactory = Callable[..., AbstractAsyncContextManager[World]]


@pytest.fixture
def make_world(settings: Settings, runtime: RecordingRuntime,
               signing: SigningKey) -> WorldFactory:
    @asynccontextmanager
    async def factory(*, fakes: bool = True, **overrides: Any) -> AsyncIterator[World]:
        app_settings = settings.model_copy(update=overrides)
        app = create_app(runtime, app_settings)
        trust_test_key(app, runtime, app_settings, signing)
        targets, executor, auth = FakeTargets(), FakeExecutor(), FakeAuth()
        runtime.mount("auth", auth.app())
        if fakes:
            runtime.mount("targets", targets.app())
            runtime.mount("executor", executor.app())
        async with serving(app, "http://jobs") as served:
            yield World(app, served.client, runtime, signing, app_settings, targets, executor,
                        auth, TokenMinter(signing, app_settings), bodies=served.bodies)

    return factory


@pytest.fixture
async def world(make_world: WorldFactory) -> AsyncIterator[World]:
    async with make_world() as running:
        yield running

