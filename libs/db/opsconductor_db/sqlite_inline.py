"""SQLite for the async engine, run on the event loop's own thread.

SQLAlchemy's async SQLite dialect reaches the database through aiosqlite, which runs every call
(execute, fetch, close, commit) on a thread of its own and wakes the event loop with the answer.
A statement here takes tens of microseconds of SQLite work; the hops around it took far longer,
and under load each one also waited for its turn in the busy loop — so a write transaction of a
few statements held the single writer's turn for tens of milliseconds, most of it waiting.
Called inline, a transaction that awaits nothing else runs start to commit without yielding.

The dialect stays SQLAlchemy's own (`sqlite+aiosqlite` URLs, its SQL and pool); only the module
it calls is swapped for `sqlite3` behind the adapted-connection shape the async engine expects.
What inline calls may block: SQLite's busy handler waits only when another process writes the
file (within the process writers take turns, see database._WriterTurn), and a WAL checkpoint's
write-back every few MB.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any, cast

from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.util import await_


class InlineCursor:
    """A cursor that reads a statement's rows as it executes it, as the async adapters do: the
    result outlives the statement (an async result is read after its session moved on), and no
    half-read SELECT keeps a read transaction open."""

    __slots__ = ("_cursor", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._cursor = connection.cursor()
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    # The async engine checks that a statement went through `await_` (it refuses drivers that
    # never wait): the statement runs in a coroutine that completes at once, without a loop turn.
    def execute(self, operation: str, parameters: Any = ()) -> InlineCursor:
        return await_(self._run(self._cursor.execute, operation, parameters))

    def executemany(self, operation: str, seq_of_parameters: Any) -> InlineCursor:
        return await_(self._run(self._cursor.executemany, operation, seq_of_parameters))

    async def _run(self, method: Any, operation: str, parameters: Any) -> InlineCursor:
        method(operation, parameters)
        cursor = self._cursor
        self.description = cursor.description
        self._rows = deque(cursor.fetchall()) if cursor.description else deque()
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        return self

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = self._rows
        return [rows.popleft() for _ in range(min(size or self.arraysize, len(rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def close(self) -> None:
        self._rows.clear()
        self._cursor.close()

    async def _async_soft_close(self) -> None:
        """Called by the async engine before it hands a result out: the rows are already read."""


class InlineConnection(AdaptedConnection):
    """A sqlite3 connection in the shape of SQLAlchemy's adapted async connections."""

    __slots__ = ("_sqlite", "dbapi")

    def __init__(self, dbapi: InlineSQLite, connection: sqlite3.Connection) -> None:
        self.dbapi = dbapi
        self._sqlite = connection
        self._connection = cast(Any, connection)  # the driver connection, as SQLAlchemy names it

    def cursor(self, server_side: bool = False) -> InlineCursor:
        return InlineCursor(self._sqlite)

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._sqlite.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._sqlite.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._sqlite.isolation_level = value  # type: ignore[assignment]  # "" is valid too

    def commit(self) -> None:
        self._sqlite.commit()

    def rollback(self) -> None:
        self._sqlite.rollback()

    def close(self) -> None:
        self._sqlite.close()

    def terminate(self) -> None:
        self._sqlite.close()


class InlineSQLite(AsyncAdapt_aiosqlite_dbapi):
    """The DB-API module handed to the dialect: sqlite3's names, connections made inline."""

    def __init__(self) -> None:
        super().__init__(sqlite3, sqlite3)
        self.has_stop = True  # connections close at once: the pool may terminate them

    def connect(self, *args: Any, **kwargs: Any) -> InlineConnection:  # type: ignore[override]
        # The pool may close a connection from another thread (garbage collection, dispose);
        # SQLAlchemy already hands one connection to one caller at a time.
        kwargs["check_same_thread"] = False
        return InlineConnection(self, sqlite3.connect(*args, **kwargs))
