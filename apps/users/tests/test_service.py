"""Rules that live below HTTP: first-start admin, the CLI's direct create, the outbox."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select

from opsconductor_contracts.permissions import ALL_PERMISSIONS, BUILTIN_ROLES
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.problems import Conflict, InvalidInput
from opsconductor_db.database import ServiceDatabase
from opsconductor_runtime.interface import PublishFailed
from opsconductor_testing.runtime import RecordingRuntime
from opsconductor_users.access import SYSTEM
from opsconductor_users.exceptions import WeakPassword
from opsconductor_users.main import create_app
from opsconductor_users.models import Role, User, outbox
from opsconductor_users.passwords import Passwords, check_password_policy
from opsconductor_users.roles import ensure_builtin_roles
from opsconductor_users.schemas import UserCreate
from opsconductor_users.service import (
    ADMIN_PASSWORD_FILE,
    UsersService,
    bootstrap_admin,
    create_user_direct,
)

if TYPE_CHECKING:
    from opsconductor_users.config import Settings

CHEAP = Passwords(time_cost=1, memory_cost=64, parallelism=1)
PUBLISHER = EventPublisher("users", outbox)


async def outbox_events(db: ServiceDatabase) -> list[dict[str, Any]]:
    import json

    async with db.transaction() as session:
        rows = (await session.execute(select(outbox.c.topic, outbox.c.payload)
                                      .order_by(outbox.c.seq))).all()
    return [json.loads(payload) for _, payload in rows]


class TestBootstrapAdmin:
    async def test_generated_password_goes_to_a_private_file_once(
            self, db: ServiceDatabase, tmp_path: Path) -> None:
        data_dir = tmp_path / "data"
        password = await bootstrap_admin(db, PUBLISHER, password=None, data_dir=data_dir,
                                         passwords=CHEAP)
        assert password is not None and len(password) >= 12
        secret_file = data_dir / ADMIN_PASSWORD_FILE
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert secret_file.read_text().strip() == password

        async with db.transaction() as session:
            identity = await UsersService(session, PUBLISHER, CHEAP).verify_credentials(
                "admin", password)
        assert identity.roles == ["admin"]
        assert identity.permissions == sorted(ALL_PERMISSIONS)

        events = await outbox_events(db)
        assert "user.created" in [e["type"] for e in events]
        assert all(password not in str(e) for e in events)

        secret_file.write_text("left alone\n")
        again = await bootstrap_admin(db, PUBLISHER, password=None, data_dir=data_dir,
                                      passwords=CHEAP)
        assert again is None
        assert secret_file.read_text() == "left alone\n"
        async with db.transaction() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 1

    async def test_password_from_the_environment_writes_no_file(
            self, db: ServiceDatabase, tmp_path: Path) -> None:
        result = await bootstrap_admin(db, PUBLISHER, password="from-the-environment",
                                       data_dir=tmp_path, passwords=CHEAP)
        assert result is None
        assert not (tmp_path / ADMIN_PASSWORD_FILE).exists()
        async with db.transaction() as session:
            identity = await UsersService(session, PUBLISHER, CHEAP).verify_credentials(
                "admin", "from-the-environment")
        assert identity.username == "admin"

    async def test_weak_environment_password_refuses_to_start(
            self, db: ServiceDatabase, tmp_path: Path) -> None:
        with pytest.raises(RuntimeError, match="OPSC_ADMIN_PASSWORD"):
            await bootstrap_admin(db, PUBLISHER, password="admin", data_dir=tmp_path,
                                  passwords=CHEAP)

    async def test_first_start_prints_one_line(
            self, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
        settings = settings.model_copy(update={"admin_password": None})
        app = create_app(RecordingRuntime(app_id="users"), settings)
        async with app.router.lifespan_context(app):
            pass
        secret = (settings.data_dir / ADMIN_PASSWORD_FILE).read_text().strip()
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(lines) == 1
        assert secret in lines[0]
        assert str((settings.data_dir / ADMIN_PASSWORD_FILE).resolve()) in lines[0]
        # A restart finds the admin and says nothing.
        app = create_app(RecordingRuntime(app_id="users"), settings)
        async with app.router.lifespan_context(app):
            pass
        assert capsys.readouterr().out.strip() == ""


class TestCreateUserDirect:
    async def test_creates_with_system_as_actor(self, db: ServiceDatabase) -> None:
        user = await create_user_direct(db, PUBLISHER, username="Ops-Bot",
                                        password="a long enough secret", roles=["operator"],
                                        email="bot@example.com", passwords=CHEAP)
        assert user.username == "ops-bot"
        assert user.roles == ["operator"]
        created = [e for e in await outbox_events(db) if e["type"] == "user.created"]
        assert created[0]["actor"] == "system"

    async def test_invalid_input_and_duplicates(self, db: ServiceDatabase) -> None:
        with pytest.raises(InvalidInput) as bad:
            await create_user_direct(db, PUBLISHER, username="x", password="short",
                                     roles=["nope"], passwords=CHEAP)
        assert "username" in (bad.value.errors or {})
        with pytest.raises(InvalidInput):
            await create_user_direct(db, PUBLISHER, username="someone",
                                     password="a long enough secret", roles=["nope"],
                                     passwords=CHEAP)
        await create_user_direct(db, PUBLISHER, username="someone",
                                 password="a long enough secret", roles=[], passwords=CHEAP)
        with pytest.raises(Conflict):
            await create_user_direct(db, PUBLISHER, username="SomeOne",
                                     password="a long enough secret", roles=[], passwords=CHEAP)


class TestOutbox:
    async def test_events_exist_only_if_the_change_committed(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            await ensure_builtin_roles(session)

        class Abort(Exception):
            pass

        with pytest.raises(Abort):
            async with db.transaction() as session:
                await UsersService(session, PUBLISHER, CHEAP).create(
                    SYSTEM, UserCreate(username="ghost", password="a long enough secret"))
                raise Abort()
        assert await outbox_events(db) == []
        async with db.transaction() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 0

    async def test_relay_publishes_committed_events_without_secrets(
            self, world: Any) -> None:
        await world.drain()
        admin = await world.admin()
        response = await world.client.post("/users", headers=world.auth(admin), json={
            "username": "newbie", "password": "newbie's secret pass", "roles": ["viewer"]})
        assert response.status_code == 201
        world.runtime.fail_publish = True
        with pytest.raises(PublishFailed):
            await world.app.state.relay.flush_once()
        assert await world.app.state.relay.pending() > 0
        world.runtime.fail_publish = False
        events = await world.events()
        assert [e["type"] for e in events] == ["user.created", "role.changed"]
        assert await world.app.state.relay.pending() == 0
        world.assert_no_secret(events, "newbie's secret pass")


class TestBuiltinRoles:
    async def test_seeding_is_idempotent_and_restores_admin(self, db: ServiceDatabase) -> None:
        for _ in range(2):
            async with db.transaction() as session:
                await ensure_builtin_roles(session, PUBLISHER)
        async with db.transaction() as session:
            roles = {r.name: r for r in (await session.scalars(select(Role))).all()}
            assert set(roles) == set(BUILTIN_ROLES)
            roles["admin"].permissions = ["users:read"]  # e.g. an older release's set
        async with db.transaction() as session:
            await ensure_builtin_roles(session, PUBLISHER)
        async with db.transaction() as session:
            admin = await session.scalar(select(Role).where(Role.name == "admin"))
            assert admin is not None and admin.permissions == sorted(ALL_PERMISSIONS)
        changes = [e["data"]["change"] for e in await outbox_events(db)]
        assert changes == ["created"] * len(BUILTIN_ROLES) + ["updated"]


class TestPasswordPolicy:
    @pytest.mark.parametrize("password", ["", "elevenchars", "x" * 257, "Alice.Smith",
                                          " alice.smith "])
    def test_refused(self, password: str) -> None:
        with pytest.raises(WeakPassword):
            check_password_policy("alice.smith", password)

    @pytest.mark.parametrize("password", ["twelve chars", "x" * 256, "alice.smith!"])
    def test_accepted(self, password: str) -> None:
        check_password_policy("alice.smith", password)

    async def test_hashes_are_argon2id_and_salted(self) -> None:
        first, second = await CHEAP.hash("same password"), await CHEAP.hash("same password")
        assert first.startswith("$argon2id$") and first != second
        assert await CHEAP.verify(first, "same password")
        assert not await CHEAP.verify(first, "other password")
        assert not await CHEAP.verify(None, "same password")
        assert not await CHEAP.verify("not a hash", "same password")
