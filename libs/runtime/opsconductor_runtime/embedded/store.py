"""The host's own SQLite file (runtime.db): state store rows and queued deliveries."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
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
    """One sqlite3 connection owned by one dedicated thread: every call, close included, runs
    there in order, so a cancelled caller can never leave the connection in use by two threads.

    Writes are committed before the awaiting caller continues: what was accepted survives a
    crash.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtime-db")

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        return conn

    async def open(self) -> None:
        self._conn = await self._in_thread(self._open)

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    async def close(self) -> None:
        await self._in_thread(self._close)
        self._thread.shutdown(wait=True)

    def _run(self, sql: str, params: tuple[Any, ...] | list[tuple[Any, ...]], many: bool) -> Any:
        assert self._conn is not None, "host store is not open"
        if many:
            with self._conn:
                self._conn.executemany(sql, params)
            return None
        cursor = self._conn.execute(sql, params)
        rows = cursor.fetchall()
        return rows if rows else cursor.lastrowid

    def _insert(self, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        assert self._conn is not None, "host store is not open"
        with self._conn:
            return [int(self._conn.execute(sql, row).lastrowid or 0) for row in rows]

    async def insert(self, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """Rows inserted in one transaction; their rowids in order."""
        return list(await self._in_thread(self._insert, sql, rows))

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return await self._in_thread(self._run, sql, params, False)

    async def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self._in_thread(self._run, sql, rows, True)

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        result = await self.execute(sql, params)
        return result if isinstance(result, list) else []
