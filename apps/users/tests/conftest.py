"""Fixtures for the users service: the app with its lifespan running, real signed tokens."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from opsconductor_core.tokens import SigningKey, generate_private_pem, signing_key
from opsconductor_db.database import ServiceDatabase
from opsconductor_testing.databases import migrated_database
from opsconductor_testing.runtime import RecordingRuntime
from opsconductor_testing.service_app import OutboxReader, TokenMinter, serving, trust_test_key
from opsconductor_users.config import Settings
from opsconductor_users.main import MIGRATIONS_DIR, create_app
from opsconductor_users.models import User
from opsconductor_users.service import create_user_direct

ADMIN_PASSWORD = "admin-password-for-tests"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def signing() -> SigningKey:
    return signing_key(generate_private_pem())


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Cheap argon2 so each test hashes in well under a millisecond.
    return Settings(database_url=database_url, data_dir=tmp_path / "data", argon2_time_cost=1,
                    argon2_memory_cost=64, argon2_parallelism=1, outbox_paused=True,
                    admin_password=ADMIN_PASSWORD)


@pytest.fixture
def runtime() -> RecordingRuntime:
    return RecordingRuntime(app_id="users")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    """A migrated database without the app, for repository and service tests."""
    async with migrated_database(database_url, MIGRATIONS_DIR) as database:
        yield database


@dataclass
class World(OutboxReader):
    """The running app plus helpers to make users, mint their tokens and read events."""

    password = PASSWORD  # every user made by `user()` gets this unless told otherwise
    admin_password = ADMIN_PASSWORD

    app: Any
    client: httpx.AsyncClient
    runtime: RecordingRuntime
    signing: SigningKey
    settings: Settings
    minter: TokenMinter

    def token(self, user: dict[str, Any], *, perms: list[str] | None = None,
              roles: list[str] | None = None) -> str:
        return self.minter.token(str(user["id"]), name=user["username"],
                                 roles=user["roles"] if roles is None else roles,
                                 perms=user["permissions"] if perms is None else perms)

    def auth(self, user: dict[str, Any], **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, **kwargs)}"}

    async def user(self, username: str, roles: list[str], *, password: str = PASSWORD,
                   email: str | None = None) -> dict[str, Any]:
        created = await create_user_direct(self.app.state.db, self.app.state.publisher,
                                           username=username, password=password, roles=roles,
                                           email=email, passwords=self.app.state.passwords)
        return created.model_dump(mode="json")

    async def admin(self) -> dict[str, Any]:
        async with self.app.state.db.transaction() as session:
            admin = await session.scalar(select(User).where(User.username == "admin"))
            assert admin is not None
            return {"id": str(admin.id), "username": admin.username,
                    "roles": admin.role_names, "permissions": admin.permissions}

    async def user_row(self, user_id: str | uuid.UUID) -> User | None:
        async with self.app.state.db.transaction() as session:
            return await session.get(User, uuid.UUID(str(user_id)))

    @staticmethod
    def assert_no_secret(payload: Any, *secrets: str) -> None:
        assert_no_secret(payload, *secrets)


@pytest.fixture
async def world(settings: Settings, runtime: RecordingRuntime,
                signing: SigningKey) -> AsyncIterator[World]:
    app = create_app(runtime, settings)
    trust_test_key(app, runtime, settings, signing)
    async with serving(app, "http://users") as served:
        yield World(app, served.client, runtime, signing, settings,
                    TokenMinter(signing, settings))


def assert_no_secret(payload: Any, *secrets: str) -> None:
    """No password given, and no argon2 hash at all, anywhere in a body or an event."""
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    assert "$argon2" not in text
    assert "password_hash" not in text
    for secret in secrets:
        assert secret not in text
