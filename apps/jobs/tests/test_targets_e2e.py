"""A run resolves its selector through the REAL targets app (same runtime, its own database)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from opsconductor_contracts.components import CREDENTIAL_MASTER_KEY_SECRET
from opsconductor_contracts.security import runtime_authenticator
from opsconductor_core.tokens import SigningKey
from opsconductor_targets.config import Settings as TargetsSettings
from opsconductor_targets.keyring import Keyring
from opsconductor_targets.main import create_app as create_targets_app

if TYPE_CHECKING:
    from conftest import World, WorldFactory

PASSWORD = "Real-Targets-Credential-777"


@pytest.fixture
async def targets_app(runtime: Any, signing: SigningKey, tmp_path: Path) -> AsyncIterator[Any]:
    runtime.secrets[CREDENTIAL_MASTER_KEY_SECRET] = Keyring.generate().dumps()
    settings = TargetsSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'targets.db'}",
                               data_dir=tmp_path / "targets-data", outbox_paused=True)
    app = create_targets_app(runtime, settings)

    async def jwks() -> dict[str, Any]:
        return {"keys": [signing.public_jwk]}

    app.state.authenticator = runtime_authenticator(runtime, settings, fetch_jwks=jwks)
    async with app.router.lifespan_context(app):
        runtime.mount("targets", app)
        yield app


async def add_target(world: World, app: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("host", "192.0.2.10")
    body.setdefault("username", "deploy")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://targets") as client:
        response = await client.post("/targets", json=body, headers=world.auth())
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_tags_resolve_through_the_targets_service(make_world: WorldFactory,
                                                        targets_app: Any) -> None:
    async with make_world(fakes=False) as world:
        world.runtime.mount("executor", world.executor.app())
        web1 = await add_target(world, targets_app, name="web-1", tags=["web", "prod"],
                                credential={"type": "password", "password": PASSWORD})
        web2 = await add_target(world, targets_app, name="web-2", tags=["web", "prod"])
        await add_target(world, targets_app, name="web-stage", tags=["web", "stage"])
        win = await add_target(world, targets_app, name="win-1", tags=["win"], protocol="winrm",
                               host="192.0.2.20", username="Administrator")
        job = await world.create(targets={"tags": ["prod", "web"]})

        response = await world.run(job["id"])
        assert response.status_code == 202, response.text
        run = world.executor.runs[-1]
        assert [(t.target_id, t.name, t.protocol) for t in run.targets] == [
            (web1["id"], "web-1", "ssh"), (web2["id"], "web-2", "ssh")]

        response = await world.run(job["id"], {"targets": {"ids": [win["id"]],
                                                           "tags": ["stage"]}})
        assert response.status_code == 202, response.text
        assert [(t.name, t.protocol) for t in world.executor.runs[-1].targets] == [
            ("web-stage", "ssh"), ("win-1", "winrm")]

        nothing = await world.run(job["id"], {"targets": {"tags": ["db"]}})
        assert world.is_problem(nothing, 422)
        gone = await world.run(job["id"], {"targets": {
            "ids": ["00000000-0000-4000-8000-000000000000"]}})
        assert world.is_problem(gone, 422)
        assert "00000000-0000-4000-8000-000000000000" in gone.json()["errors"]["targets"]
        assert all(PASSWORD not in body for body in world.bodies)
        assert len(world.executor.runs) == 2
