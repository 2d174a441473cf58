"""Service rules below the HTTP layer: the rate limiter's counting under contention."""

from __future__ import annotations

import asyncio
import time

from opsconductor_auth.ratelimit import RateLimiter
from opsconductor_contracts.components import RATE_LIMIT_PREFIX, STATE_STORE
from opsconductor_runtime.interface import ETagMismatch
from opsconductor_testing.runtime import RecordingRuntime


class InterleavingRuntime(RecordingRuntime):
    """Yields before every read, as a real state store does, so replicas race between a read
    and their conditional write (the write's own check-and-set stays atomic)."""

    mismatches: int = 0

    async def get_state(self, store, key):
        await asyncio.sleep(0)
        return await super().get_state(store, key)

    async def save_state(self, store, key, value, *, etag=None, ttl_s=None):
        try:
            await super().save_state(store, key, value, etag=etag, ttl_s=ttl_s)
        except ETagMismatch:
            self.mismatches += 1
            raise


class TestRateLimiter:
    async def test_concurrent_hits_are_all_counted(self):
        runtime = InterleavingRuntime()
        limiter = RateLimiter(runtime)

        await asyncio.gather(*[limiter.hit("k", 60) for _ in range(25)])

        window = await limiter.peek("k")
        assert window is not None and window.count == 25
        assert runtime.mismatches > 0  # the race happened and was retried

    async def test_counter_lives_in_the_state_store_with_the_window_as_ttl(self):
        runtime = RecordingRuntime()
        limiter = RateLimiter(runtime)

        await limiter.hit("k", 300)

        value, _, expires = runtime._state[(STATE_STORE, RATE_LIMIT_PREFIX + "k")]
        assert expires is not None and 299 <= expires - time.time() <= 300
        assert b"count" in value

    async def test_a_new_window_starts_after_the_old_one(self):
        limiter = RateLimiter(RecordingRuntime())
        await limiter.hit("k", 1)
        await limiter.hit("k", 1)
        await asyncio.sleep(1.05)

        assert await limiter.peek("k") is None
        assert (await limiter.hit("k", 1)).count == 1

    async def test_clear_forgets(self):
        limiter = RateLimiter(RecordingRuntime())
        await limiter.hit("k", 60)
        await limiter.clear("k")
        assert await limiter.peek("k") is None

    async def test_unreadable_counter_starts_over(self):
        runtime = RecordingRuntime()
        await runtime.save_state(STATE_STORE, RATE_LIMIT_PREFIX + "k", b"garbage")
        limiter = RateLimiter(runtime)
        assert (await limiter.hit("k", 60)).count == 1
