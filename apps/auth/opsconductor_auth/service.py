"""Sessions: login, refresh-token rotation with reuse detection, logout and revocation.

Login and refresh run their own transactions (not the request's): a rejected attempt must still
commit what it found out (a failure event, a family revoked for reuse) before answering 401.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

import opsconductor_contracts.topics as topics
from opsconductor_auth.config import Settings
from opsconductor_auth.exceptions import InvalidCredentials, InvalidRefreshToken
from opsconductor_auth.keys import KeyManager
from opsconductor_auth.models import RefreshToken
from opsconductor_auth.ratelimit import RateLimiter, Window
from opsconductor_auth.repository import RefreshTokenRepository
from opsconductor_auth.schemas import TokenPair
from opsconductor_contracts.clients.users import UsersClient, VerifiedUser
from opsconductor_contracts.components import REVOKED_JTI_PREFIX, STATE_STORE
from opsconductor_contracts.events import LoginFailed, LoginSucceeded, SessionRevoked
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.problems import TooManyRequests
from opsconductor_core.security import Principal
from opsconductor_core.tokens import SigningKey, new_access_claims, sign
from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_runtime.interface import Runtime

log = logging.getLogger("opsconductor.auth")


def token_digest(raw: str) -> str:
    """Refresh and API tokens are stored only as this; they are random, so no salt is needed."""
    return hashlib.sha256(raw.encode()).hexdigest()


class SessionService:
    def __init__(self, *, db: ServiceDatabase, runtime: Runtime, settings: Settings,
                 keys: KeyManager, users: UsersClient, publisher: EventPublisher,
                 limiter: RateLimiter) -> None:
        self._db = db
        self._runtime = runtime
        self._settings = settings
        self._keys = keys
        self._users = users
        self._publisher = publisher
        self._limiter = limiter

    # -- login ---------------------------------------------------------------------------------

    async def login(self, username: str, password: str, client_address: str) -> TokenPair:
        s = self._settings
        user_key = "login-user:" + hashlib.sha256(username.lower().encode()).hexdigest()[:40]
        address_key = "login-address:" + client_address
        attempts = await self._limiter.hit(address_key, s.rate_limit_window_s)
        if attempts.count > s.login_attempts_per_address:
            await self._refuse(username, client_address, attempts)
        failures = await self._limiter.peek(user_key)
        if failures is not None and failures.count >= s.login_failures_per_user:
            await self._refuse(username, client_address, failures)

        key = await self._keys.current()  # 503 before the password is even looked at
        user = await self._users.verify_credentials(username, password)
        if user is None or not user.active:
            await self._limiter.hit(user_key, s.rate_limit_window_s)
            await self._record_failure(username, client_address,
                                       "invalid_credentials" if user is None else "disabled")
            raise InvalidCredentials()

        async with self._db.transaction() as session:
            pair = await self._issue(session, key, user, family_id=None)
            await self._publisher.emit(
                session, topics.LOGIN_SUCCEEDED,
                LoginSucceeded(user_id=user.user_id, username=user.username, at=utcnow(),
                               client_address=client_address),
                actor=user.user_id, resource_type="user", resource_id=user.user_id)
        await self._limiter.clear(user_key)
        log.info("login succeeded", extra={"user_id": user.user_id})
        return pair

    async def _refuse(self, username: str, client_address: str, window: Window) -> None:
        await self._record_failure(username, client_address, "rate_limited")
        raise TooManyRequests("Too many login attempts; try again later",
                              retry_after_s=window.retry_after_s(time.time()))

    async def _record_failure(self, username: str, client_address: str, reason: str) -> None:
        log.info("login failed", extra={"username": username, "reason": reason,
                                        "client_address": client_address})
        async with self._db.transaction() as session:
            await self._publisher.emit(
                session, topics.LOGIN_FAILED,
                LoginFailed(username=username, reason=reason, client_address=client_address),
                actor=None, resource_type="user", resource_id=username)

    async def _issue(self, session: AsyncSession, key: SigningKey, user: VerifiedUser,
                     family_id: uuid.UUID | None) -> TokenPair:
        s = self._settings
        claims = new_access_claims(
            subject=user.user_id, issuer=s.jwt_issuer, audience=s.jwt_audience,
            ttl_s=s.access_ttl_s,
            extra={"name": user.username, "roles": list(user.roles),
                   "perms": sorted(set(user.permissions))})
        repo = RefreshTokenRepository(session)
        if family_id is None:
            family_id = (await repo.add_family(user.user_id)).id
        raw = secrets.token_urlsafe(32)
        now = utcnow()
        await repo.add(RefreshToken(
            id=uuid.uuid4(), family_id=family_id, user_id=user.user_id,
            token_hash=token_digest(raw), created_at=now,
            expires_at=now + timedelta(seconds=s.refresh_ttl_s),
            access_jti=claims["jti"], access_expires_at=datetime.fromtimestamp(claims["exp"], UTC)))
        return TokenPair(access_token=sign(key, claims), refresh_token=raw,
                         expires_in=s.access_ttl_s)

    # -- refresh -------------------------------------------------------------------------------

    async def refresh(self, raw: str) -> TokenPair:
        async with self._db.sessions() as session:
            repo = RefreshTokenRepository(session)
            token = await repo.by_hash(token_digest(raw))
            family = await repo.family(token.family_id) if token else None
        if token is None or family is None:
            raise InvalidRefreshToken()
        if token.used_at is not None:
            log.warning("spent refresh token presented again; revoking its family",
                        extra={"family_id": str(family.id), "user_id": token.user_id})
            await self._revoke_now([family.id], token.user_id, "refresh_token_reuse")
            raise InvalidRefreshToken()
        if family.revoked_at is not None or token.expires_at <= utcnow():
            raise InvalidRefreshToken()

        # The user's current roles go into the new access token; a disabled user gets none.
        identity = await self._users.get_identity(token.user_id)
        if identity is None or not identity.active:
            await self._revoke_now([family.id], token.user_id, "user_inactive")
            raise InvalidRefreshToken()
        key = await self._keys.current()

        pair: TokenPair | None = None
        async with self._db.transaction() as session:
            repo = RefreshTokenRepository(session)
            claimed = await repo.mark_used(token.id, utcnow())
            current_family = await repo.family(family.id)
            if claimed and current_family is not None and current_family.revoked_at is None:
                pair = await self._issue(session, key, identity, family_id=family.id)
        if pair is None:
            if not claimed:  # a concurrent exchange spent it first: that is reuse too
                await self._revoke_now([family.id], token.user_id, "refresh_token_reuse")
            raise InvalidRefreshToken()
        return pair

    # -- logout and revocation -----------------------------------------------------------------

    async def logout(self, principal: Principal, raw_refresh_token: str) -> None:
        if principal.kind == "user" and principal.token_id:
            await self.deny_access_token(principal.token_id, principal.expires_at)
        async with self._db.transaction() as session:
            token = await RefreshTokenRepository(session).by_hash(token_digest(raw_refresh_token))
            # Someone else's refresh token is left alone, and the answer does not say so.
            if token is not None and token.user_id == principal.subject:
                await self.revoke_families(session, [token.family_id], principal.subject,
                                           "logout", actor=principal.subject)

    async def deny_access_token(self, jti: str, expires_at: int | None) -> None:
        """Every service checks this key, so the token stops working everywhere at once."""
        remaining = (expires_at - int(time.time())) if expires_at else self._settings.access_ttl_s
        if remaining <= 0:
            return
        await self._runtime.save_state(STATE_STORE, REVOKED_JTI_PREFIX + jti, b"1",
                                       ttl_s=remaining)

    async def _revoke_now(self, family_ids: Sequence[uuid.UUID], user_id: str,
                          reason: str) -> None:
        async with self._db.transaction() as session:
            await self.revoke_families(session, family_ids, user_id, reason, actor=None)

    async def revoke_families(self, session: AsyncSession, family_ids: Sequence[uuid.UUID],
                              user_id: str, reason: str, *, actor: str | None) -> int:
        """Revoke families and deny-list the access tokens issued in them that still live."""
        repo = RefreshTokenRepository(session)
        now = utcnow()
        revoked = await repo.revoke_families(family_ids, now, reason)
        for jti, expires_at in await repo.live_access_tokens(revoked, now):
            # Written before the commit: a retry repeats an idempotent write, never skips it.
            await self.deny_access_token(jti, int(expires_at.timestamp()) + 1)
        for family_id in revoked:
            await self._publisher.emit(
                session, topics.SESSION_REVOKED,
                SessionRevoked(user_id=user_id, family_id=str(family_id), reason=reason),
                actor=actor, resource_type="session", resource_id=str(family_id))
        if revoked:
            log.info("sessions revoked", extra={"user_id": user_id, "reason": reason,
                                                "count": len(revoked)})
        return len(revoked)

    async def revoke_user_sessions(self, session: AsyncSession, user_id: str, reason: str, *,
                                   actor: str | None) -> int:
        family_ids = await RefreshTokenRepository(session).live_family_ids(user_id)
        return await self.revoke_families(session, family_ids, user_id, reason, actor=actor)

    async def purge_expired(self, session: AsyncSession) -> int:
        return await RefreshTokenRepository(session).purge_expired(utcnow())
