"""The host's own SQLite file (runtime.db): state store rows and queued deliveries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL,
    expires_at REAL, PRIMARY KEY (store, key)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL, route TEXT NOT NULL, pubsub TEXT NOT NULL, topic TEXT NOT NULL,
    dead_letter_topic TEXT, payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at);
"""


class HostStore:
    """One sqlite3 connection, called on the event loop's thread: each call is a statement or a
    short transaction on a local file (WAL, no sync per commit), far shorter than a hop to a
    thread and back, and a call can never be cut off half-way by a cancelled caller.

    Writes are committed before the awaiting caller continues: what was accepted survives a
    crash.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        return conn

    async def open(self) -> None:
        self._conn = self._open()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    @property
    def _open_conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "host store is not open"
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # The connection autocommits each statement (isolation_level=None); where a call's rows
        # go in together, it says so itself. (`with conn:` alone would commit each one.)
        conn = self._open_conn
        conn.execute("BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def insert(self, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """Rows inserted in one transaction; their rowids in order."""
        with self._transaction() as conn:
            return [int(conn.execute(sql, row).lastrowid or 0) for row in rows]

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cursor = self._open_conn.execute(sql, params)
        rows = cursor.fetchall()
        return rows if rows else cursor.lastrowid

    async def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._transaction() as conn:
            conn.executemany(sql, rows)

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        result = await self.execute(sql, params)
        return result if isinstance(result, list) else []
