"""The PostgreSQL tier: real throwaway databases, and loud skips that CI turns into failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from opsconductor_db import ServiceDatabase
from opsconductor_testing import postgres
from opsconductor_testing.databases import POSTGRES_ENV, require_postgres
from opsconductor_testing.tiers import REQUIRE_ALL_TIERS_ENV, missing_dependency


@pytest.fixture
def admin_url() -> str:
    return require_postgres()


@pytest.mark.postgres
class TestTemporaryDatabase:
    async def test_query_runs_through_service_database_then_database_is_gone(
        self, admin_url: str
    ) -> None:
        name = f"t_{uuid.uuid4().hex[:12]}"

        with postgres.temporary_database(admin_url, name) as url:
            assert url.startswith("postgresql+asyncpg://")
            assert url.endswith(f"/{name}")
            db = ServiceDatabase(url)
            try:
                async with db.transaction() as session:
                    row = (await session.execute(
                        text("SELECT current_database(), 40 + 2 AS answer"))).one()
            finally:
                await db.dispose()
            assert tuple(row) == (name, 42)
            assert postgres.database_exists(admin_url, name)

        assert not postgres.database_exists(admin_url, name)

    async def test_drop_succeeds_even_when_a_connection_was_left_open(
        self, admin_url: str
    ) -> None:
        name = f"t_{uuid.uuid4().hex[:12]}"

        with postgres.temporary_database(admin_url, name) as url:
            leaked = ServiceDatabase(url)
            await leaked.ping()  # never disposed before the drop

        assert not postgres.database_exists(admin_url, name)
        await leaked.engine.dispose()

    def test_unsafe_names_are_refused(self, admin_url: str) -> None:
        with pytest.raises(ValueError, match="not a safe database name"):
            with postgres.temporary_database(admin_url, 'x"; DROP DATABASE postgres; --'):
                pass


@pytest.mark.postgres
class TestDatabasePool:
    async def test_released_database_comes_back_empty(self, admin_url: str) -> None:
        pool = postgres.DatabasePool(admin_url)
        try:
            url = pool.acquire()
            db = ServiceDatabase(url)
            async with db.transaction() as session:
                await session.execute(text("CREATE TABLE leftover (id int)"))
                await session.execute(text("CREATE SCHEMA extra"))
                await session.execute(text("CREATE TABLE extra.more (id int)"))
            # The engine is still connected: release must not be blocked by it.
            pool.release(url)
            await db.dispose()

            again = pool.acquire()
            db = ServiceDatabase(again)
            async with db.transaction() as session:
                tables = (await session.execute(text(
                    "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"))).all()
                schemas = set((await session.scalars(text(
                    "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                    "AND nspname <> 'information_schema'"))).all())
                # The wiped database is still usable for new tables.
                await session.execute(text("CREATE TABLE fresh (id int)"))
            await db.dispose()

            assert again == url
            assert tables == []
            assert schemas == {"public"}
        finally:
            pool.close()

        assert not postgres.database_exists(admin_url, url.rsplit("/", 1)[1])

    def test_databases_of_dead_sessions_are_dropped(self, admin_url: str) -> None:
        # A pid that cannot be running: above the kernel's pid_max.
        stale = f"{postgres.POOL_PREFIX}99999999_0"
        postgres.create_database(admin_url, stale)
        try:
            pool = postgres.DatabasePool(admin_url)
            pool.close()
            assert not postgres.database_exists(admin_url, stale)
        finally:
            postgres.drop_database(admin_url, stale)


class TestMissingDependency:
    def test_skips_locally(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(REQUIRE_ALL_TIERS_ENV, raising=False)

        with pytest.raises(pytest.skip.Exception, match=r"^MISSING DEPENDENCY: redis$"):
            missing_dependency("redis")

    @pytest.mark.parametrize("value", ["1", "true", "YES"])
    def test_fails_when_every_tier_is_required(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv(REQUIRE_ALL_TIERS_ENV, value)

        with pytest.raises(pytest.fail.Exception, match="MISSING DEPENDENCY: redis"):
            missing_dependency("redis")


INNER_TEST = '''
def test_uses_a_database(database_url):
    assert database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://"))
'''

INNER_CONFIG = '''
[pytest]
addopts = -p opsconductor_testing.plugin -p no:cacheprovider -rA
asyncio_default_fixture_loop_scope = function
markers =
    postgres: needs PostgreSQL
'''


def _run_inner(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(textwrap.dedent(INNER_CONFIG))
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    clean = {k: v for k, v in os.environ.items()
             if k not in (POSTGRES_ENV, REQUIRE_ALL_TIERS_ENV, "PYTEST_ADDOPTS")}
    # Wide enough that pytest does not shorten the reasons in its summary.
    clean["COLUMNS"] = "240"
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=tmp_path,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stdout.splitlines()
             if re.search(r"\d+ (passed|failed|error|skipped)", line)]
    return lines[-1] if lines else result.stdout + result.stderr


class TestPostgresParamWithoutServer:
    def test_skips_loudly_by_default(self, tmp_path: Path) -> None:
        result = _run_inner(tmp_path)

        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"1 passed, 1 skipped", _summary(result)), result.stdout
        assert re.search(r"SKIPPED \[1\] test_inner.py:\d+: MISSING DEPENDENCY: PostgreSQL: set "
                         + POSTGRES_ENV, result.stdout), result.stdout
        assert "PASSED test_inner.py::test_uses_a_database[sqlite]" in result.stdout

    def test_fails_when_every_tier_is_required(self, tmp_path: Path) -> None:
        result = _run_inner(tmp_path, **{REQUIRE_ALL_TIERS_ENV: "1"})

        assert result.returncode != 0
        assert re.search(r"1 passed, 1 error", _summary(result)), result.stdout
        assert "ERROR at setup of test_uses_a_database[postgres]" in result.stdout
        assert re.search(r"^MISSING DEPENDENCY: PostgreSQL: .*\(OPSC_REQUIRE_ALL_TIERS is set\)$",
                         result.stdout, re.MULTILINE), result.stdout
        assert "skipped" not in _summary(result)

    def test_postgres_param_carries_the_postgres_marker(self, tmp_path: Path) -> None:
        result = _run_inner(tmp_path, "-m", "not postgres", **{REQUIRE_ALL_TIERS_ENV: "1"})

        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"1 passed, 1 deselected", _summary(result)), result.stdout


@pytest.mark.postgres
def test_postgres_param_runs_when_the_server_is_there(admin_url: str, tmp_path: Path) -> None:
    result = _run_inner(tmp_path, **{POSTGRES_ENV: admin_url, REQUIRE_ALL_TIERS_ENV: "1"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"2 passed", _summary(result)), result.stdout
