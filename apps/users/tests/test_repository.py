"""SQL behaviour on each database: schema, search, pagination, atomic counters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_users.models import Base, Role, User
from opsconductor_users.repository import RoleRepository, UserRepository
from opsconductor_users.roles import ensure_builtin_roles

T0 = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


async def add_user(db: ServiceDatabase, username: str, roles: list[str], *,
                   email: str | None = None, active: bool = True) -> User:
    async with db.transaction() as session:
        await ensure_builtin_roles(session)
        now = utcnow()
        user = User(username=username, email=email, password_hash="$argon2id$placeholder",
                    active=active, created_at=now, updated_at=now, password_changed_at=now,
                    login_count=0)
        user.roles = await RoleRepository(session).by_names(roles)
        return await UserRepository(session).add(user)


class TestSchema:
    async def test_migration_matches_the_models(self, db: ServiceDatabase) -> None:
        def diff(connection: object) -> list[object]:
            context = MigrationContext.configure(connection)  # type: ignore[arg-type]
            return compare_metadata(context, Base.metadata)

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == []


class TestSearch:
    async def test_filters_combine(self, db: ServiceDatabase) -> None:
        await add_user(db, "ann", ["operator"], email="ann@corp.example")
        await add_user(db, "ben", ["operator", "viewer"], active=False)
        await add_user(db, "cat_dog", ["viewer"])
        async with db.transaction() as session:
            repo = UserRepository(session)

            async def names(**kwargs: object) -> list[str]:
                page = await repo.search(**kwargs)  # type: ignore[arg-type]
                return sorted(u.username for u in page.items)

            assert await names(role="viewer") == ["ben", "cat_dog"]
            assert await names(role="viewer", active=True) == ["cat_dog"]
            assert await names(q="CORP") == ["ann"]
            assert await names(q="_") == ["cat_dog"]  # a literal underscore, not a wildcard
            assert await names(role="nobody") == []

    async def test_pages_are_stable_and_complete(self, db: ServiceDatabase) -> None:
        for i in range(7):
            await add_user(db, f"user{i}", [])
        seen: list[str] = []
        cursor = None
        async with db.transaction() as session:
            repo = UserRepository(session)
            while True:
                page = await repo.search(limit=3, cursor=cursor)
                seen += [u.username for u in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    break
        assert seen == [f"user{i}" for i in range(7)]


class TestActivity:
    async def test_concurrent_logins_all_count(self, db: ServiceDatabase) -> None:
        user = await add_user(db, "busy", [])

        async def login(at: datetime) -> None:
            async with db.transaction() as session:
                await UserRepository(session).record_login(user.id, at)

        await asyncio.gather(*(login(T0 + timedelta(seconds=i)) for i in range(8)))
        async with db.transaction() as session:
            row = await session.get(User, user.id)
            assert row is not None
            assert row.login_count == 8
            assert row.last_login_at == T0 + timedelta(seconds=7)

    async def test_unknown_user_changes_nothing(self, db: ServiceDatabase) -> None:
        import uuid

        async with db.transaction() as session:
            assert await UserRepository(session).record_login(uuid.uuid4(), T0) is False


class TestAdmins:
    async def test_counts_active_admins_only(self, db: ServiceDatabase) -> None:
        await add_user(db, "root1", ["admin"])
        await add_user(db, "root2", ["admin", "viewer"], active=False)
        await add_user(db, "someone", ["viewer"])
        async with db.transaction() as session:
            assert await UserRepository(session).count_active_admins() == 1

    async def test_deleting_a_user_removes_their_grants(self, db: ServiceDatabase) -> None:
        user = await add_user(db, "temp", ["viewer"])
        async with db.transaction() as session:
            repo = UserRepository(session)
            row = await repo.get(user.id)
            assert row is not None
            await repo.delete(row)
        async with db.transaction() as session:
            viewer = await RoleRepository(session).by_name("viewer")
            assert viewer is not None
            assert list(await UserRepository(session).holders_of(viewer.id)) == []
            assert isinstance(viewer, Role)
