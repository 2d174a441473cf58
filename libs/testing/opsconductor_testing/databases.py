"""`database_url`: every database test runs on SQLite and on PostgreSQL (an empty database each)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from opsconductor_db import ServiceDatabase
from opsconductor_db.migrations import upgrade_async
from opsconductor_testing.tiers import missing_dependency

if TYPE_CHECKING:
    from opsconductor_testing.postgres import DatabasePool

POSTGRES_ENV = "OPSC_TEST_POSTGRES_URL"


def postgres_admin_url() -> str | None:
    """A URL with rights to create databases, e.g. postgresql://opsc:opsc@127.0.0.1:5432/postgres."""
    return os.environ.get(POSTGRES_ENV) or None


def sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'service.db'}"


def require_postgres() -> str:
    """The admin URL, or a loud skip (a failure under OPSC_REQUIRE_ALL_TIERS)."""
    admin = postgres_admin_url()
    if not admin:
        missing_dependency(
            f"PostgreSQL: set {POSTGRES_ENV} "
            '(scripts/services.sh start postgres; eval "$(scripts/services.sh env postgres)")'
        )
    return admin


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[DatabasePool]:
    """Empty PostgreSQL databases, reused across the session (see postgres.DatabasePool)."""
    admin = require_postgres()
    from opsconductor_testing.postgres import DatabasePool

    pool = DatabasePool(admin)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy async URL of an empty database: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    pool: DatabasePool = request.getfixturevalue("postgres_databases")
    url = pool.acquire()
    try:
        yield url
    finally:
        pool.release(url)


@asynccontextmanager
async def migrated_database(url: str, migrations_dir: Path) -> AsyncIterator[ServiceDatabase]:
    """A service's database at its latest migration, without the app (repository tests)."""
    database = ServiceDatabase(url)
    await upgrade_async(url, migrations_dir)
    try:
        yield database
    finally:
        await database.dispose()
