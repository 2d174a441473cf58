"""Throwaway PostgreSQL databases for tests (through asyncpg).

CREATE DATABASE costs about half a second, so `DatabasePool` creates each database once per test
session and wipes it between tests (every schema dropped, an empty `public` recreated): each test
still starts from an empty database, for a few milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
POOL_PREFIX = "opsc_test_"

_WIPE = """
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT nspname FROM pg_namespace
             WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
               AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', s.nspname);
    END LOOP;
    CREATE SCHEMA public;
END
$$;
"""


def plain_url(url: str) -> str:
    """The libpq form asyncpg accepts (no SQLAlchemy driver suffix)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+asyncpg://", url)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _checked(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a safe database name: {name!r}")
    return name


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a private loop in a private thread.

    Fixtures are synchronous and may be set up while pytest-asyncio owns the thread's event loop;
    asyncio.run() there would replace (and close) that loop.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="opsc-test-postgres", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(plain_url(url), timeout=10)


async def _execute(url: str, *statements: str) -> None:
    conn = await _connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch_names(url: str, sql: str, *args: Any) -> list[str]:
    conn = await _connect(url)
    try:
        return [row[0] for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def _fetch_rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await _connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one query, from synchronous test code."""
    return _run(_fetch_rows(plain_url(url), sql, *args))


def drop_databases_with_prefix(admin_url: str, prefix: str) -> None:
    """Drop every database whose name starts with `prefix` (a test platform's set)."""
    pattern = _checked(prefix).replace("_", "\\_") + "%"
    for name in _run(_fetch_names(admin_url, "SELECT datname FROM pg_database WHERE datname LIKE $1",
                                  pattern)):
        drop_database(admin_url, name)


def database_exists(admin_url: str, name: str) -> bool:
    return bool(_run(_fetch_names(admin_url, "SELECT datname FROM pg_database WHERE datname = $1", name)))


def create_database(admin_url: str, name: str) -> None:
    _run(_execute(admin_url, f'CREATE DATABASE "{_checked(name)}"'))


# Only our own client sessions: an autovacuum worker counts as a superuser process, which a
# non-superuser may not signal (nor DROP DATABASE ... WITH (FORCE)); PostgreSQL moves those out
# of the way by itself. Waits up to 5 s for each session to be gone.
_END_OWN_SESSIONS = (
    "SELECT pg_terminate_backend(pid, 5000)::text FROM pg_stat_activity "
    "WHERE datname = $1 AND pid <> pg_backend_pid() "
    "AND usename = current_user AND backend_type = 'client backend'"
)


def end_own_sessions(admin_url: str, name: str) -> None:
    """End connections a test left open to `name` (an engine it did not dispose)."""
    _run(_fetch_names(admin_url, _END_OWN_SESSIONS, _checked(name)))


def drop_database(admin_url: str, name: str) -> None:
    end_own_sessions(admin_url, name)
    _run(_execute(admin_url, f'DROP DATABASE IF EXISTS "{_checked(name)}"'))


def wipe_database(admin_url: str, name: str) -> None:
    """Leave `name` as empty as a new database: none of our sessions, only an empty public."""
    end_own_sessions(admin_url, name)
    _run(_execute(with_database(plain_url(admin_url), name), _WIPE))


@contextmanager
def temporary_database(admin_url: str, name: str) -> Iterator[str]:
    """CREATE DATABASE `name`, yield its SQLAlchemy (asyncpg) URL, then DROP it (even if in use)."""
    create_database(admin_url, name)
    try:
        yield sqlalchemy_url(with_database(admin_url, name))
    finally:
        drop_database(admin_url, name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DatabasePool:
    """Databases opsc_test_<pid>_<token>_<n>, reused within one test session, dropped at its end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        # The pid lets a later session recognise leftovers of a dead one; the token keeps two
        # pools of one process apart.
        self._prefix = f"{POOL_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:6]}_"
        self._idle: list[str] = []
        self._all: list[str] = []
        self._drop_leftovers()

    def _drop_leftovers(self) -> None:
        """Databases of earlier sessions that died before cleaning up (this machine only)."""
        names = _run(
            _fetch_names(
                self.admin_url,
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                POOL_PREFIX.replace("_", "\\_") + "%",
            )
        )
        for name in names:
            pid = name[len(POOL_PREFIX) :].split("_", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                drop_database(self.admin_url, name)

    def acquire(self) -> str:
        """An empty database's SQLAlchemy URL; give it back with `release`."""
        if self._idle:
            name = self._idle.pop()
        else:
            name = f"{self._prefix}{len(self._all)}"
            create_database(self.admin_url, name)
            self._all.append(name)
        return sqlalchemy_url(with_database(self.admin_url, name))

    def release(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        try:
            wipe_database(self.admin_url, name)
        except Exception:
            # Something the wipe cannot undo: start that slot over with a brand-new database.
            drop_database(self.admin_url, name)
            create_database(self.admin_url, name)
        self._idle.append(name)

    def close(self) -> None:
        for name in self._all:
            drop_database(self.admin_url, name)
        self._all.clear()
        self._idle.clear()
