"""API tokens for scripts: created by a signed-in user, shown once, stored as a hash.

A token never holds more than its owner: at every use its permissions are intersected with the
owner's current ones, and a disabled or deleted owner makes it inactive.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_auth.config import Settings
from opsconductor_auth.exceptions import ApiTokenCannotMint, ApiTokenNotFound, PermissionNotHeld
from opsconductor_auth.models import ApiToken
from opsconductor_auth.repository import ApiTokenRepository
from opsconductor_auth.schemas import (
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenPage,
    ApiTokenRead,
    Introspection,
)
from opsconductor_auth.service import token_digest
from opsconductor_contracts import topics
from opsconductor_contracts.clients.users import UsersClient
from opsconductor_contracts.events import ApiTokenChanged
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.security import Principal
from opsconductor_db.types import utcnow

log = logging.getLogger("opsconductor.auth.api_tokens")

TOKEN_PREFIX = "opsc_"  # noqa: S105 - a prefix, not a secret
INACTIVE = Introspection(active=False)


class ApiTokenService:
    def __init__(self, session: AsyncSession, *, users: UsersClient, publisher: EventPublisher,
                 settings: Settings) -> None:
        self._session = session
        self._repo = ApiTokenRepository(session)
        self._users = users
        self._publisher = publisher
        self._settings = settings

    async def create(self, principal: Principal, request: ApiTokenCreate) -> ApiTokenCreated:
        # A leaked script token must not be able to mint more tokens.
        if principal.kind != "user":
            raise ApiTokenCannotMint()
        if request.permissions is not None:
            missing = sorted(set(request.permissions) - principal.permissions)
            if missing:
                raise PermissionNotHeld(missing)
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = await self._repo.add(ApiToken(
            id=uuid.uuid4(), user_id=principal.subject, name=request.name,
            token_hash=token_digest(raw), permissions=request.permissions, created_at=now,
            expires_at=now + timedelta(days=request.expires_in_days)))
        await self._emit(topics.API_TOKEN_CREATED, row, actor=principal.subject)
        log.info("api token created", extra={"token_id": str(row.id), "user_id": row.user_id})
        return ApiTokenCreated(**ApiTokenRead.model_validate(row).model_dump(), token=raw)

    async def page(self, principal: Principal, *, limit: int,
                   cursor: str | None) -> ApiTokenPage:
        page = await self._repo.page_for_user(principal.subject, limit=limit, cursor=cursor)
        return ApiTokenPage(items=[ApiTokenRead.model_validate(t) for t in page.items],
                            next_cursor=page.next_cursor)

    async def delete(self, principal: Principal, token_id: uuid.UUID) -> None:
        row = await self._repo.owned(principal.subject, token_id)
        if row is None:
            raise ApiTokenNotFound()
        await self._repo.delete(row)
        await self._emit(topics.API_TOKEN_REVOKED, row, actor=principal.subject)
        log.info("api token revoked", extra={"token_id": str(row.id), "user_id": row.user_id})

    async def delete_all_of(self, user_id: str, *, actor: str | None) -> int:
        rows = await self._repo.for_user(user_id)
        for row in rows:
            await self._repo.delete(row)
            await self._emit(topics.API_TOKEN_REVOKED, row, actor=actor)
        return len(rows)

    async def introspect(self, raw: str) -> Introspection:
        if not raw.startswith(TOKEN_PREFIX):
            return INACTIVE
        row = await self._repo.by_hash(token_digest(raw))
        now = utcnow()
        if row is None or row.expires_at <= now:
            return INACTIVE
        owner = await self._users.get_identity(row.user_id)
        if owner is None or not owner.active:
            return INACTIVE
        held = set(owner.permissions)
        granted = held if row.permissions is None else held & set(row.permissions)
        interval = timedelta(seconds=self._settings.api_token_touch_interval_s)
        if row.last_used_at is None or now - row.last_used_at >= interval:
            await self._repo.touch(row.id, now)
        return Introspection(active=True, token_id=str(row.id), user_id=row.user_id,
                             username=owner.username, roles=list(owner.roles),
                             permissions=sorted(granted),
                             expires_at=int(row.expires_at.timestamp()))

    async def purge_expired(self) -> int:
        return await self._repo.purge_expired(utcnow())

    async def _emit(self, topic: str, row: ApiToken, *, actor: str | None) -> None:
        await self._publisher.emit(
            self._session, topic,
            ApiTokenChanged(token_id=str(row.id), user_id=row.user_id, name=row.name),
            actor=actor, resource_type="api_token", resource_id=str(row.id))
