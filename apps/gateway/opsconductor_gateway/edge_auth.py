"""Authentication at the edge: reject requests without a valid bearer token before routing.

Services verify the same token again (signature, claims, deny-list), so the short cache here
only saves repeated signature checks on the gateway; it never lets a request skip the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from opsconductor_core.security import Authenticator, Principal


class EdgeAuthenticator:
    def __init__(self, authenticator: Authenticator, *, cache_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._authenticator = authenticator
        self._cache_s = cache_s
        self._max = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, token: str) -> Principal:
        """The caller's principal; raises Unauthorized (401) for anything not trusted."""
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._cache[token]
        principal = await self._authenticator.authenticate(token)
        if self._cache_s > 0:
            self._remember(token, principal, now)
        return principal

    def _remember(self, token: str, principal: Principal, now: float) -> None:
        ttl = self._cache_s
        if principal.expires_at is not None:
            ttl = min(ttl, principal.expires_at - time.time())
        if ttl <= 0:
            return
        if len(self._cache) >= self._max:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= self._max:
                self._cache.clear()
        self._cache[token] = (principal, now + ttl)
