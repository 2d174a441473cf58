"""SQL only: flushes, never commits, no side effects."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import CursorResult

from opsconductor_auth.models import ApiToken, RefreshFamily, RefreshToken, SigningKeyRecord
from opsconductor_db.repository import Page, Repository


def _rowcount(result: object) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


class SigningKeyRepository(Repository[SigningKeyRecord]):
    model = SigningKeyRecord

    async def get_by_kid(self, kid: str) -> SigningKeyRecord | None:
        return await self.session.get(SigningKeyRecord, kid)

    async def retire_all_except(self, kid: str, at: datetime) -> None:
        await self.session.execute(
            update(SigningKeyRecord)
            .where(SigningKeyRecord.kid != kid, SigningKeyRecord.retired_at.is_(None))
            .values(retired_at=at))

    async def published(self, retired_after: datetime) -> Sequence[SigningKeyRecord]:
        """Keys in use, and retired keys whose tokens may still be alive."""
        stmt = (select(SigningKeyRecord)
                .where(or_(SigningKeyRecord.retired_at.is_(None),
                           SigningKeyRecord.retired_at > retired_after))
                .order_by(SigningKeyRecord.first_seen_at.desc(), SigningKeyRecord.kid))
        return (await self.session.scalars(stmt)).all()


class RefreshTokenRepository(Repository[RefreshToken]):
    model = RefreshToken

    async def by_hash(self, token_hash: str) -> RefreshToken | None:
        return await self.session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == token_hash))

    async def family(self, family_id: uuid.UUID) -> RefreshFamily | None:
        return await self.session.get(RefreshFamily, family_id)

    async def add_family(self, user_id: str) -> RefreshFamily:
        family = RefreshFamily(id=uuid.uuid4(), user_id=user_id)
        self.session.add(family)
        await self.session.flush()
        return family

    async def mark_used(self, token_id: uuid.UUID, at: datetime) -> bool:
        """Spend a token exactly once, even when two exchanges race: only one update matches."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token_id, RefreshToken.used_at.is_(None))
            .values(used_at=at))
        return _rowcount(result) == 1

    async def revoke_families(self, family_ids: Sequence[uuid.UUID], at: datetime,
                              reason: str) -> list[uuid.UUID]:
        """Revoke the still-live families among `family_ids`; returns those that changed."""
        if not family_ids:
            return []
        live = list((await self.session.scalars(
            select(RefreshFamily.id).where(RefreshFamily.id.in_(family_ids),
                                           RefreshFamily.revoked_at.is_(None)))).all())
        if live:
            await self.session.execute(
                update(RefreshFamily).where(RefreshFamily.id.in_(live))
                .values(revoked_at=at, revoked_reason=reason))
        return live

    async def live_family_ids(self, user_id: str) -> list[uuid.UUID]:
        return list((await self.session.scalars(
            select(RefreshFamily.id).where(RefreshFamily.user_id == user_id,
                                           RefreshFamily.revoked_at.is_(None)))).all())

    async def live_access_tokens(self, family_ids: Sequence[uuid.UUID],
                                 now: datetime) -> list[tuple[str, datetime]]:
        """(jti, expires_at) of access tokens issued in these families that have not expired."""
        if not family_ids:
            return []
        rows = await self.session.execute(
            select(RefreshToken.access_jti, RefreshToken.access_expires_at)
            .where(RefreshToken.family_id.in_(family_ids), RefreshToken.access_expires_at > now))
        return [(jti, exp) for jti, exp in rows.all()]

    async def purge_expired(self, now: datetime) -> int:
        result = await self.session.execute(
            delete(RefreshToken).where(RefreshToken.expires_at <= now))
        # A family with no token left cannot be used or detected any more.
        await self.session.execute(
            delete(RefreshFamily).where(
                ~select(RefreshToken.id).where(RefreshToken.family_id == RefreshFamily.id)
                .exists()))
        return _rowcount(result)


class ApiTokenRepository(Repository[ApiToken]):
    model = ApiToken

    async def by_hash(self, token_hash: str) -> ApiToken | None:
        return await self.session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))

    async def owned(self, user_id: str, token_id: uuid.UUID) -> ApiToken | None:
        return await self.session.scalar(
            select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id))

    async def page_for_user(self, user_id: str, *, limit: int,
                            cursor: str | None) -> Page[ApiToken]:
        return await self.page(select(ApiToken).where(ApiToken.user_id == user_id),
                               limit=limit, cursor=cursor)

    async def for_user(self, user_id: str) -> Sequence[ApiToken]:
        return (await self.session.scalars(
            select(ApiToken).where(ApiToken.user_id == user_id))).all()

    async def touch(self, token_id: uuid.UUID, at: datetime) -> None:
        await self.session.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=at))

    async def purge_expired(self, now: datetime) -> int:
        result = await self.session.execute(delete(ApiToken).where(ApiToken.expires_at <= now))
        return _rowcount(result)
