"""One engine and session factory per service; one transaction per request or per event."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_

from opsconductor_core.loops import PerLoop
from opsconductor_db.sqlite_inline import InlineSQLite

log = logging.getLogger("opsconductor.db")

AfterCommit = Callable[[], None]
NOTIFY_KEY = "opsconductor.notify_on_commit"


def notify_on_commit(session: AsyncSession) -> None:
    """Ask for the database's on_commit listeners to run once this transaction commits."""
    session.info[NOTIFY_KEY] = True


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_file(url: str) -> Path:
    return Path(make_url(url).database or "")


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")
# How long a writer waits for the database: for its turn here, and for SQLite's own lock.
WRITER_WAIT_S = 30.0


class _WriterTurn:
    """One writing transaction at a time per SQLite database in this process, handed over
    when the last one ends.

    SQLite allows one writer; a connection that finds the write lock taken sleeps in its busy
    handler (1, 2, 5, 10 ... 100 ms) and retries, however soon the lock is released. With a
    service's requests, outbox relay and background writers sharing a file, those sleeps were
    most of a run's wait under load. Here a connection takes the turn before its first write
    (the moment SQLite would take the lock) and gives it back when it returns to the pool,
    after its commit or rollback. With statements run on the loop's thread (sqlite_inline), a
    writer of this process that met the lock in SQLite would stall the loop the holder needs to
    finish: the turn is what keeps that from happening.
    """

    def __init__(self) -> None:
        self._lock = PerLoop(asyncio.Lock)

    def install(self, engine: AsyncEngine) -> None:
        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _take_turn(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            held = conn.connection.info  # lives with the DBAPI connection, as in checkin
            if _TURN_KEY in held or not _writes(statement):
                return
            lock = self._lock.get()
            await_(_acquire(lock))
            held[_TURN_KEY] = lock

        @event.listens_for(engine.sync_engine.pool, "checkin")
        def _give_back(_: Any, record: Any) -> None:
            lock = record.info.pop(_TURN_KEY, None)
            if lock is not None:
                lock.release()


_TURN_KEY = "opsconductor.writer_turn"


async def _acquire(lock: asyncio.Lock) -> None:
    try:
        async with asyncio.timeout(WRITER_WAIT_S):
            await lock.acquire()
    except TimeoutError:
        raise sqlite3.OperationalError("database is locked (no write turn in time)") from None


def _writes(statement: str) -> bool:
    return statement.lstrip()[:7].upper().startswith(_WRITES)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if is_sqlite(url):
        # A service keeps several sessions open at once (requests, the outbox relay, background
        # work); past SQLAlchemy's default 5 pooled connections each extra one was opened and
        # closed per use (a thread, the PRAGMAs). Sessions and connections roll back their own
        # transaction on close, so the pool's rollback on return is one more thread hop.
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_reset_on_return", None)
        engine = create_async_engine(url, module=InlineSQLite(),
                                     connect_args={"timeout": WRITER_WAIT_S}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets readers run beside the single writer; foreign keys are off by default.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(WRITER_WAIT_S * 1000)}")
            cursor.close()

        _WriterTurn().install(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


class ServiceDatabase:
    """The service's database: `session()` commits once at the end, then tells listeners."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._after_commit: list[AfterCommit] = []

    def on_commit(self, callback: AfterCommit) -> None:
        """Run `callback` after each successful commit of a transaction that asked for it with
        `notify_on_commit(session)` (the outbox relay wakes up this way, and only then: a read-only
        request must not cost every relay a query)."""
        self._after_commit.append(callback)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
            notify = session.info.pop(NOTIFY_KEY, False)
        if notify:
            for callback in self._after_commit:
                callback()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
