"""`user.active`, published straight to pub/sub at most once a minute per user.

The gateway has no database, hence no outbox: a lost activity ping is harmless (the next one
comes a minute later), so a failed publish is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.envelope import new_event
from opsconductor_contracts.events import UserActive
from opsconductor_runtime.interface import Runtime

log = logging.getLogger("opsconductor.gateway.activity")

SOURCE = "gateway"


class UserActivity:
    def __init__(self, runtime: Runtime, *, interval_s: float = 60.0, max_users: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._runtime = runtime
        self._interval = interval_s
        self._max_users = max_users
        self._clock = clock
        self._last: dict[str, float] = {}

    def due(self, user_id: str) -> bool:
        """True once per interval per user; claims the slot so concurrent requests don't race."""
        now = self._clock()
        last = self._last.get(user_id)
        if last is not None and now - last < self._interval:
            return False
        if last is None and len(self._last) >= self._max_users:
            self._last = {u: t for u, t in self._last.items() if now - t < self._interval}
        self._last[user_id] = now
        return True

    async def publish(self, user_id: str) -> None:
        event = new_event(topics.USER_ACTIVE, UserActive(user_id=user_id, at=datetime.now(UTC)),
                          source=SOURCE, actor=user_id, resource_type="user",
                          resource_id=user_id)
        try:
            await self._runtime.publish(PUBSUB, topics.USER_ACTIVE, event)
        except Exception as exc:
            log.warning("user.active not published", extra={"user_id": user_id,
                                                            "error": type(exc).__name__})
