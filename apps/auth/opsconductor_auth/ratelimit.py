"""Fixed-window counters in the shared state store, so every replica counts the same attempts."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass

from opsconductor_contracts.components import RATE_LIMIT_PREFIX, STATE_STORE
from opsconductor_core.problems import ServiceUnavailable
from opsconductor_runtime.interface import ETagMismatch, Runtime, StateItem

MAX_ATTEMPTS = 12


@dataclass(frozen=True)
class Window:
    count: int
    reset_at: float

    def retry_after_s(self, now: float) -> int:
        return max(1, math.ceil(self.reset_at - now))


class RateLimiter:
    def __init__(self, runtime: Runtime, *, prefix: str = RATE_LIMIT_PREFIX) -> None:
        self._runtime = runtime
        self._prefix = prefix

    async def _read(self, key: str) -> tuple[StateItem | None, Window | None]:
        item = await self._runtime.get_state(STATE_STORE, self._prefix + key)
        if item is None:
            return None, None
        try:
            raw = item.json()
            window = Window(int(raw["count"]), float(raw["reset_at"]))
        except (ValueError, KeyError, TypeError):
            return item, None  # unreadable: start a new window over it
        return item, window

    async def peek(self, key: str) -> Window | None:
        _, window = await self._read(key)
        if window is None or window.reset_at <= time.time():
            return None
        return window

    async def hit(self, key: str, window_s: int) -> Window:
        """Count one event; conditional on the ETag so concurrent replicas never lose a hit."""
        for _ in range(MAX_ATTEMPTS):
            item, current = await self._read(key)
            now = time.time()
            if current is None or current.reset_at <= now:
                updated = Window(1, now + window_s)
            else:
                updated = Window(current.count + 1, current.reset_at)
            body = json.dumps({"count": updated.count, "reset_at": updated.reset_at}).encode()
            try:
                # etag "" means "only if nobody created it meanwhile".
                await self._runtime.save_state(STATE_STORE, self._prefix + key, body,
                                               etag=item.etag if item else "",
                                               ttl_s=updated.retry_after_s(now))
                return updated
            except ETagMismatch:
                await asyncio.sleep(random.uniform(0, 0.01))  # noqa: S311 - jitter, not crypto
        raise ServiceUnavailable("Too much contention on the rate limiter; try again")

    async def clear(self, key: str) -> None:
        await self._runtime.delete_state(STATE_STORE, self._prefix + key)
