"""ServiceDatabase.transaction: one commit at the end; on_commit listeners only after a commit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsconductor_db import GUID, ServiceDatabase
from opsconductor_db.database import notify_on_commit
from opsconductor_db.deps import Session
from opsconductor_testing.databases import sqlite_url


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(50), unique=True)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    database = ServiceDatabase(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield database
    await database.dispose()


async def _titles(db: ServiceDatabase) -> list[str]:
    async with db.sessions() as session:
        return list((await session.scalars(select(Note.title).order_by(Note.title))).all())


class Boom(Exception):
    pass


async def _write_then_fail(db: ServiceDatabase) -> None:
    """A transaction that writes "lost", then raises (Boom, caught here)."""
    with pytest.raises(Boom):
        async with db.transaction() as session:
            session.add(Note(title="lost"))
            await session.flush()
            raise Boom()


class TestTransaction:
    async def test_commits_when_the_block_ends(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            session.add(Note(title="kept"))

        assert await _titles(db) == ["kept"]

    async def test_rolls_back_when_the_block_raises(self, db: ServiceDatabase) -> None:
        await _write_then_fail(db)

        assert await _titles(db) == []

    async def test_on_commit_runs_after_the_commit_is_visible(self, db: ServiceDatabase) -> None:
        seen_by_listener: list[int] = []
        db.on_commit(lambda: seen_by_listener.append(len(seen_by_listener)))
        committed: list[list[str]] = []

        async with db.transaction() as session:
            session.add(Note(title="first"))
            notify_on_commit(session)
            await session.flush()
            assert seen_by_listener == []  # not while the transaction is open
        committed.append(await _titles(db))

        assert seen_by_listener == [0]
        assert committed == [["first"]]

    async def test_on_commit_is_silent_after_a_rollback(self, db: ServiceDatabase) -> None:
        calls: list[str] = []
        db.on_commit(lambda: calls.append("commit"))

        with pytest.raises(Boom):
            async with db.transaction() as session:
                session.add(Note(title="lost"))
                notify_on_commit(session)
                raise Boom()

        assert calls == []

    async def test_on_commit_is_silent_when_the_commit_itself_fails(
        self, db: ServiceDatabase
    ) -> None:
        async with db.transaction() as session:
            session.add(Note(title="taken"))
        calls: list[str] = []
        db.on_commit(lambda: calls.append("commit"))

        # Not flushed inside the block: the unique violation surfaces in commit().
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                session.add(Note(title="other"))
                session.add(Note(title="taken"))
                notify_on_commit(session)

        assert calls == []
        assert await _titles(db) == ["taken"]

    async def test_every_listener_runs_once_per_commit(self, db: ServiceDatabase) -> None:
        calls: list[str] = []
        db.on_commit(lambda: calls.append("a"))
        db.on_commit(lambda: calls.append("b"))

        for title in ("one", "two"):
            async with db.transaction() as session:
                session.add(Note(title=title))
                notify_on_commit(session)

        assert calls == ["a", "b", "a", "b"]

    async def test_listeners_stay_silent_for_a_transaction_that_did_not_ask(
        self, db: ServiceDatabase
    ) -> None:
        calls: list[str] = []
        db.on_commit(lambda: calls.append("commit"))
        async with db.transaction() as session:
            session.add(Note(title="quiet"))
        async with db.transaction() as session:
            notify_on_commit(session)
        assert calls == ["commit"]


class TestRequestTransaction:
    async def test_a_write_the_commit_refuses_is_never_answered_as_done(
            self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            session.add(Note(title="taken"))
        app = FastAPI()
        app.state.db = db

        @app.post("/notes", status_code=201)
        async def add(session: Session) -> dict[str, str]:
            session.add(Note(title="taken"))  # refused only when the transaction commits
            return {"title": "taken"}

        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post("/notes")
        assert response.status_code == 500
        assert await _titles(db) == ["taken"]


async def test_ping_reaches_the_database(db: ServiceDatabase) -> None:
    await db.ping()

    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Note)) == 0


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[ServiceDatabase]:
    database = ServiceDatabase(sqlite_url(tmp_path))
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield database
    await database.dispose()


async def _insert(db: ServiceDatabase, title: str, *, hold_s: float = 0.0,
                  wrote: asyncio.Event | None = None) -> float:
    """Insert one note, keep the transaction open `hold_s` after the write; when it committed."""
    async with db.transaction() as session:
        session.add(Note(title=title))
        await session.flush()
        if wrote is not None:
            wrote.set()
        await asyncio.sleep(hold_s)
    return time.monotonic()


class TestSqliteWriters:
    """SQLite has one writer at a time; writers of one process take turns in the event loop."""

    async def test_a_waiting_writer_goes_as_soon_as_the_writer_before_it_commits(
        self, sqlite_db: ServiceDatabase
    ) -> None:
        # Left to SQLite, the waiting connection sleeps in its busy handler and retries: 350 ms
        # into a wait its next try comes ~78 ms after the lock was freed.
        gaps = []
        for turn in range(3):
            wrote = asyncio.Event()
            first = asyncio.create_task(_insert(sqlite_db, f"first-{turn}", hold_s=0.35,
                                                wrote=wrote))
            await wrote.wait()
            second_done = await _insert(sqlite_db, f"second-{turn}")
            gaps.append(second_done - await first)
        assert min(gaps) < 0.04, gaps
        assert len(await _titles(sqlite_db)) == 6

    async def test_many_concurrent_writers_all_commit(self, sqlite_db: ServiceDatabase) -> None:
        titles = [f"note-{i:02}" for i in range(40)]
        await asyncio.gather(*(_insert(sqlite_db, t, hold_s=0.005) for t in titles))
        assert await _titles(sqlite_db) == titles

    async def test_a_reader_does_not_wait_for_a_writer(self, sqlite_db: ServiceDatabase) -> None:
        await _insert(sqlite_db, "before")
        wrote = asyncio.Event()
        writer = asyncio.create_task(_insert(sqlite_db, "during", hold_s=2.0, wrote=wrote))
        await wrote.wait()
        async with asyncio.timeout(1.0):
            assert await _titles(sqlite_db) == ["before"]
        await writer
        assert await _titles(sqlite_db) == ["before", "during"]

    async def test_a_rolled_back_writer_gives_its_turn_back(self, sqlite_db: ServiceDatabase) -> None:
        await _write_then_fail(sqlite_db)
        async with asyncio.timeout(5.0):
            await _insert(sqlite_db, "next")
        assert await _titles(sqlite_db) == ["next"]


class _LoopTurns:
    """Counts the event loop's turns while it runs (a task that yields once per turn)."""

    def __init__(self) -> None:
        self.count = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.count += 1

    def stop(self) -> None:
        self._task.cancel()


class TestSqliteInline:
    """SQLite is called on the event loop's thread: a transaction does not wait for loop turns."""

    async def test_a_write_transaction_runs_without_giving_up_the_loop(
        self, sqlite_db: ServiceDatabase
    ) -> None:
        await _insert(sqlite_db, "warm")  # the pool's first connection is made here

        async def loop_turns_taken(statements: int) -> int:
            turns = _LoopTurns()
            await asyncio.sleep(0)
            before = turns.count
            async with sqlite_db.transaction() as session:
                for i in range(statements):
                    session.add(Note(title=f"note-{statements}-{i}"))
                    await session.flush()
            turns.stop()
            return turns.count - before

        empty = await loop_turns_taken(0)
        # Through a driver thread each statement gave up the loop until the thread answered.
        assert await loop_turns_taken(10) <= empty
        assert len(await _titles(sqlite_db)) == 11

    async def test_a_result_is_read_after_its_connection_closed(
        self, sqlite_db: ServiceDatabase
    ) -> None:
        for title in ("a", "b", "c"):
            await _insert(sqlite_db, title)
        async with sqlite_db.engine.connect() as reader:
            result = await reader.execute(select(Note.title).order_by(Note.title))
        # Its unread rows do not keep a read open: a checkpoint can take every WAL frame back.
        async with sqlite_db.engine.connect() as conn:
            busy = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()[0]
        assert busy == 0
        assert [row.title for row in result] == ["a", "b", "c"]
