"""State store with ETags and TTL. Memory answers reads; every write is committed to SQLite first."""

from __future__ import annotations

import time

from opsconductor_runtime.embedded.store import HostStore
from opsconductor_runtime.interface import ETagMismatch, StateItem

Entry = tuple[bytes, int, float | None]


class EmbeddedStateStore:
    def __init__(self, store: HostStore) -> None:
        self._db = store
        self._data: dict[tuple[str, str], Entry] = {}

    async def load(self) -> None:
        now = time.time()
        await self._db.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at <= ?",
                               (now,))
        rows = await self._db.fetch("SELECT store, key, value, version, expires_at FROM state")
        self._data = {(s, k): (bytes(v), int(ver), exp) for s, k, v, ver, exp in rows}

    def _live(self, store: str, key: str) -> Entry | None:
        entry = self._data.get((store, key))
        if entry is not None and entry[2] is not None and entry[2] <= time.time():
            return None
        return entry

    def get(self, store: str, key: str) -> StateItem | None:
        entry = self._live(store, key)
        return None if entry is None else StateItem(key, entry[0], str(entry[1]))

    async def save(self, store: str, key: str, value: bytes, etag: str | None,
                   ttl_s: int | None) -> None:
        current = self._live(store, key)
        if etag is not None:
            current_tag = str(current[1]) if current else ""
            if etag != current_tag:
                raise ETagMismatch(key)
        version = (current[1] + 1) if current else 1
        expires = time.time() + ttl_s if ttl_s else None
        await self._db.execute(
            "INSERT INTO state (store, key, value, version, expires_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value, "
            "version = excluded.version, expires_at = excluded.expires_at",
            (store, key, value, version, expires),
        )
        self._data[(store, key)] = (value, version, expires)

    async def delete(self, store: str, key: str, etag: str | None) -> None:
        current = self._live(store, key)
        if etag is not None and current is not None and str(current[1]) != etag:
            raise ETagMismatch(key)
        await self._db.execute("DELETE FROM state WHERE store = ? AND key = ?", (store, key))
        self._data.pop((store, key), None)

    async def purge_expired(self) -> int:
        now = time.time()
        expired = [k for k, (_, _, exp) in self._data.items() if exp is not None and exp <= now]
        for k in expired:
            self._data.pop(k, None)
        await self._db.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at <= ?",
                               (now,))
        return len(expired)
