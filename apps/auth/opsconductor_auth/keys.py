"""The signing key: read from the secret store, rotated by changing the secret, published as JWKS.

The private key lives only in the secret store and in memory. Every public key that ever signed is
recorded in `signing_keys`, so after a rotation the previous key stays in the JWKS (on every
replica, across restarts) until every token it signed has expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from opsconductor_auth.config import Settings
from opsconductor_auth.exceptions import SigningKeyUnavailable
from opsconductor_auth.models import SigningKeyRecord
from opsconductor_auth.repository import SigningKeyRepository
from opsconductor_contracts.components import JWT_SIGNING_KEY_SECRET, SECRET_STORE
from opsconductor_core.tokens import SigningKey, signing_key
from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_runtime.interface import Runtime

log = logging.getLogger("opsconductor.auth.keys")


class KeyManager:
    def __init__(self, runtime: Runtime, db: ServiceDatabase, settings: Settings) -> None:
        self._runtime = runtime
        self._db = db
        self._settings = settings
        self._current: SigningKey | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def kid(self) -> str | None:
        return self._current.kid if self._current else None

    async def current(self) -> SigningKey:
        """The key to sign with now; re-reads the secret when the copy in memory is stale."""
        if self._current is None or self._stale():
            await self.reload(only_if_stale=True)
        if self._current is None:
            raise SigningKeyUnavailable()
        return self._current

    def _stale(self) -> bool:
        return time.monotonic() - self._checked_at >= self._settings.key_reload_s

    async def reload(self, *, only_if_stale: bool = False) -> SigningKey | None:
        """Read the secret; when its key id changed, record it and retire the others."""
        async with self._lock:
            if only_if_stale and self._current is not None and not self._stale():
                return self._current  # another caller reloaded while this one waited
            self._checked_at = time.monotonic()
            try:
                pem = await self._runtime.get_secret(SECRET_STORE, JWT_SIGNING_KEY_SECRET)
                key = signing_key(pem)
            except Exception as exc:
                # The reason only: the secret itself must never reach a log line.
                log.warning("signing key could not be read; keeping the current one",
                            extra={"reason": type(exc).__name__, "current_kid": self.kid})
                return self._current
            if self._current is None or key.kid != self._current.kid:
                await self._record(key)
                log.info("signing key in use", extra={"kid": key.kid, "previous_kid": self.kid})
                self._current = key
            return self._current

    async def _record(self, key: SigningKey) -> None:
        for attempt in range(2):
            try:
                async with self._db.transaction() as session:
                    repo = SigningKeyRepository(session)
                    now = utcnow()
                    row = await repo.get_by_kid(key.kid)
                    if row is None:
                        await repo.add(SigningKeyRecord(kid=key.kid,
                                                        public_jwk=json.dumps(key.public_jwk),
                                                        first_seen_at=now))
                    elif row.retired_at is not None:
                        row.retired_at = None  # the secret went back to an earlier key
                    await repo.retire_all_except(key.kid, now)
                return
            except IntegrityError:
                # Another replica recorded the same key first; the second pass finds its row.
                if attempt:
                    raise

    async def jwks(self) -> dict[str, Any]:
        """Public keys that may have signed a still-valid token (from the table: all replicas)."""
        cutoff = utcnow() - timedelta(seconds=self._settings.key_retention_s)
        async with self._db.sessions() as session:
            rows = await SigningKeyRepository(session).published(cutoff)
        return {"keys": [json.loads(row.public_jwk) for row in rows]}

    async def ready(self) -> None:
        """Readiness: a service that cannot sign cannot log anyone in."""
        await self.current()
