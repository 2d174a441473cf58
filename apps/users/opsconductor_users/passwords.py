"""argon2id hashing (off the event loop), equal-time checks and the password policy."""

from __future__ import annotations

import asyncio
import secrets
from functools import cached_property

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from opsconductor_users.exceptions import WeakPassword

PASSWORD_MIN = 12
PASSWORD_MAX = 256


class Passwords:
    def __init__(self, *, time_cost: int = 3, memory_cost: int = 65536,
                 parallelism: int = 4) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                                      parallelism=parallelism, type=Type.ID)

    @cached_property
    def _dummy_hash(self) -> str:
        # Unknown users are checked against this, so they cost what a real check costs.
        return self._hasher.hash(secrets.token_urlsafe(32))

    def warm(self) -> None:
        """Compute the dummy hash now, so the first unknown-user check is not slower."""
        _ = self._dummy_hash

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True only for a real hash that matches; `None` burns the same time and says False."""
        target = stored_hash if stored_hash is not None else self._dummy_hash
        matched: bool
        try:
            matched = await asyncio.to_thread(self._hasher.verify, target, password)
        except (VerificationError, InvalidHashError):
            matched = False
        return bool(matched) and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True


def check_password_policy(username: str, password: str, *, field: str = "password") -> None:
    if len(password) < PASSWORD_MIN:
        raise WeakPassword(field, f"must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise WeakPassword(field, f"must be at most {PASSWORD_MAX} characters")
    if password.strip().lower() == username.lower():
        raise WeakPassword(field, "must not be the username")
