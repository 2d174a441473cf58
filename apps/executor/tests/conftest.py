"""Fixtures for the executor service: the app with its lifespan, real signed tokens, a fake
`targets` service at the runtime port, and a scripted engine for lease and recovery tests
(the real engine runs in test_runs_ssh.py against a real OpenSSH server)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from opsconductor_contracts.components import EXECUTION_SECRETS_KEY_SECRET
from opsconductor_contracts.jobspec import RunRequest, render
from opsconductor_contracts.permissions import ALL_PERMISSIONS
from opsconductor_core.tokens import SigningKey, generate_private_pem, signing_key
from opsconductor_db.database import ServiceDatabase
from opsconductor_executor.config import Settings
from opsconductor_executor.engine import EngineChunk, TargetOutcome, TargetPlan
from opsconductor_executor.main import MIGRATIONS_DIR, create_app
from opsconductor_executor.models import Execution, ExecutionTarget
from opsconductor_testing.databases import migrated_database
from opsconductor_testing.runtime import RecordingRuntime
from opsconductor_testing.service_app import (
    TokenMinter,
    assert_absent,
    database_dump,
    serving,
    trust_test_key,
)

FINAL = ("succeeded", "failed", "canceled", "timed_out", "interrupted")


# --- a fake targets service (the credential route only) ----------------------------------------

@dataclass
class FakeTargets:
    """Answers GET /internal/targets/{id}/credential from `credentials`; counts the calls."""

    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/internal/targets/{target_id}/credential")
        async def credential(target_id: str, request: Request) -> JSONResponse:
            self.calls.append(target_id)
            found = self.credentials.get(target_id)
            if found is None:
                return JSONResponse({"status": 404}, status_code=404)
            return JSONResponse(found)

        return app

    def add(self, target_id: str, **overrides: Any) -> None:
        self.credentials[target_id] = {
            "target_id": target_id, "name": f"t-{target_id[:8]}", "host": "192.0.2.1",
            "port": 22, "protocol": "ssh", "username": "deploy", "credential_type": "password",
            "password": "target-password-never-shown", "version": 1, **overrides}


# --- a scripted engine: the Engine.run signature, no network ------------------------------------

@dataclass
class Script:
    """What one target does: an exit code per step, and optionally a step that blocks until
    cancel (or forever, when `hang_forever`)."""

    exit_codes: Sequence[int] = ()
    hang_at: int | None = None
    hang_forever: bool = False
    echo_values: bool = False


@dataclass
class ScriptedEngine:
    scripts: dict[str, Script] = field(default_factory=dict)
    dispatched: list[tuple[str, int]] = field(default_factory=list)
    runs: list[list[TargetPlan]] = field(default_factory=list)
    credentials_seen: list[str] = field(default_factory=list)
    secret_values_seen: list[dict[str, str]] = field(default_factory=list)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, run: RunRequest, targets: list[TargetPlan], hooks: Any, credentials: Any,
                  cancel: asyncio.Event) -> None:
        self.runs.append(list(targets))
        self.secret_values_seen.append(dict(run.secret_values))
        gate = asyncio.Semaphore(run.concurrency)

        async def one(plan: TargetPlan) -> None:
            async with gate:
                await self._target(run, plan, hooks, credentials, cancel)

        await asyncio.gather(*(one(p) for p in targets))

    async def _target(self, run: RunRequest, plan: TargetPlan, hooks: Any, credentials: Any,
                      cancel: asyncio.Event) -> None:
        script = self.scripts.get(plan.name, Script())
        now = datetime.now(UTC)
        if cancel.is_set():
            await hooks.target_finished(plan.target_id, TargetOutcome(
                status="canceled", exit_code=None, attempts=plan.attempts_done, error="canceled",
                started_at=None, finished_at=now, output_truncated=False))
            return
        credential = await credentials.get(plan.target_id)
        if credential is not None:
            self.credentials_seen.append(plan.target_id)
        attempt = plan.attempts_done + 1
        await hooks.target_started(plan.target_id, attempt)
        exit_code: int | None = 0
        status = "succeeded"
        for index in range(plan.first_step, len(run.steps)):
            await hooks.step_dispatched(plan.target_id, index)
            self.dispatched.append((plan.name, index))
            text = f"step {index} on {plan.name}\n"
            if script.echo_values:
                values = {**run.values, **run.secret_values}
                text = render(run.steps[index].command or "", values, str) + "\n"
            await hooks.output([EngineChunk(plan.target_id, "stdout", text, datetime.now(UTC))])
            if script.hang_at == index:
                self.hanging.set()
                if script.hang_forever:
                    await asyncio.Event().wait()
                await cancel.wait()
                status, exit_code = "canceled", None
                break
            codes = list(script.exit_codes)
            exit_code = codes[index] if index < len(codes) else 0
            await hooks.step_finished(plan.target_id, index, exit_code)
            if exit_code != 0 and not run.steps[index].continue_on_error:
                status = "failed"
                break
        await hooks.target_finished(plan.target_id, TargetOutcome(
            status=status, exit_code=exit_code, attempts=attempt,  # type: ignore[arg-type]
            error=None if status == "succeeded" else f"{status} at step",
            started_at=now, finished_at=datetime.now(UTC), output_truncated=False))

    async def close(self) -> None:
        return None


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def signing() -> SigningKey:
    return signing_key(generate_private_pem())


@pytest.fixture
def fake_targets() -> FakeTargets:
    return FakeTargets()


@pytest.fixture
def runtime(fake_targets: FakeTargets) -> RecordingRuntime:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    runtime = RecordingRuntime(app_id="executor", secrets={EXECUTION_SECRETS_KEY_SECRET: key})
    runtime.mount("targets", fake_targets.app())
    return runtime


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "data", outbox_paused=True,
                    replica_id="replica-a", cancel_poll_s=0.05, sweep_interval_s=0.2,
                    lease_s=15)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    async with migrated_database(database_url, MIGRATIONS_DIR) as database:
        yield database


@dataclass
class World:
    app: Any
    client: httpx.AsyncClient
    runtime: RecordingRuntime
    signing: SigningKey
    settings: Settings
    engine: Any
    targets: FakeTargets
    bodies: list[str] = field(default_factory=list)
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    minter: TokenMinter = field(init=False)

    def __post_init__(self) -> None:
        self.minter = TokenMinter(self.signing, self.settings)

    @property
    def db(self) -> ServiceDatabase:
        return self.app.state.db  # type: ignore[no-any-return]

    def auth(self, perms: Sequence[str] | None = None) -> dict[str, str]:
        perms = list(ALL_PERMISSIONS) if perms is None else list(perms)
        token = self.minter.token(self.user_id, perms=perms)
        return {"Authorization": f"Bearer {token}"}

    @staticmethod
    def caller(app_id: str = "jobs") -> dict[str, str]:
        return {"dapr-caller-app-id": app_id}

    def request(self, names: Sequence[str] = ("web1",), **overrides: Any) -> dict[str, Any]:
        """A run request body for targets called `names` (their credentials are known)."""
        targets = []
        for name in names:
            target_id = str(uuid.uuid4())
            self.targets.add(target_id, name=name)
            targets.append({"target_id": target_id, "name": name, "protocol": "ssh"})
        body: dict[str, Any] = {
            "job_id": str(uuid.uuid4()), "job_name": "deploy", "job_version": 1,
            "requested_by": self.user_id,
            "steps": [{"name": "one", "kind": "command", "command": "echo one"},
                      {"name": "two", "kind": "command", "command": "echo two"}],
            "targets": targets}
        body.update(overrides)
        return body

    async def submit(self, body: dict[str, Any], caller: str = "jobs") -> str:
        response = await self.client.post("/internal/executions", json=body,
                                          headers=self.caller(caller))
        assert response.status_code == 201, response.text
        return str(response.json()["execution_id"])

    async def execution(self, execution_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/executions/{execution_id}", headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_final(self, execution_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        return await wait_final(self.db, execution_id, timeout_s, read=self.execution)

    async def targets_of(self, execution_id: str) -> dict[str, dict[str, Any]]:
        response = await self.client.get(f"/executions/{execution_id}/targets",
                                         headers=self.auth(), params={"limit": 500})
        assert response.status_code == 200, response.text
        return {t["name"]: t for t in response.json()["items"]}

    async def stream(self, execution_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        response = await self.client.get(f"/internal/executions/{execution_id}/stream",
                                         params={"after_seq": after_seq},
                                         headers=self.caller("gateway"))
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]

    async def events(self) -> list[dict[str, Any]]:
        """Publish what the outbox holds (the relay is paused in tests) and return all so far."""
        while await self.app.state.relay.flush_once():
            pass
        await self.app.state.runner.live.drain()
        return [p.event for p in self.runtime.published]

    async def database_dump(self) -> bytes:
        return await database_dump(self.db)


async def wait_final(db: ServiceDatabase, execution_id: str, timeout_s: float = 20.0,
                     read: Callable[[str], Any] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        async with db.transaction() as session:
            row = await session.get(Execution, uuid.UUID(execution_id))
            status = row.status if row else None
        if status in FINAL:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"execution {execution_id} still {status} after {timeout_s}s")
        await asyncio.sleep(0.02)
    if read is not None:
        return await read(execution_id)  # type: ignore[no-any-return]
    return {"status": status}


async def target_rows(db: ServiceDatabase, execution_id: str) -> dict[str, ExecutionTarget]:
    async with db.transaction() as session:
        rows = await session.scalars(select(ExecutionTarget).where(
            ExecutionTarget.execution_id == uuid.UUID(execution_id)))
        return {r.name: r for r in rows}


WorldFactory = Callable[..., AbstractAsyncContextManager[World]]


@pytest.fixture
def make_world(settings: Settings, runtime: RecordingRuntime, signing: SigningKey,
               fake_targets: FakeTargets) -> WorldFactory:
    @asynccontextmanager
    async def factory(engine: Any = None, **overrides: Any) -> AsyncIterator[World]:
        app_settings = settings.model_copy(update=overrides)
        app = create_app(runtime, app_settings)
        engine = engine if engine is not None else ScriptedEngine()
        if engine != "real":
            app.state.runner.engine = engine

        trust_test_key(app, runtime, app_settings, signing)
        async with serving(app, "http://executor") as served:
            yield World(app, served.client, runtime, signing, app_settings,
                        app.state.runner.engine, fake_targets, bodies=served.bodies)

    return factory


@pytest.fixture
async def world(make_world: WorldFactory) -> AsyncIterator[World]:
    async with make_world() as running:
        yield running


class Kit:
    """What test modules use beside fixtures (with --import-mode=importlib they cannot import
    this conftest)."""

    Script = Script
    ScriptedEngine = ScriptedEngine
    target_rows = staticmethod(target_rows)
    wait_final = staticmethod(wait_final)
    database_dump = staticmethod(database_dump)
    assert_absent = staticmethod(assert_absent)


@pytest.fixture
def kit() -> Kit:
    return Kit()
