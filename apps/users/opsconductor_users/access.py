"""Who is acting, with which permissions right now, and the no-escalation rule."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts.permissions import ALL_PERMISSIONS
from opsconductor_core.problems import Forbidden
from opsconductor_core.security import Principal
from opsconductor_users.exceptions import AccountUnavailable, PrivilegeEscalation
from opsconductor_users.models import User

SYSTEM_ACTOR = "system"


def parse_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Actor:
    """The caller as the database sees it now, not as an older token describes it."""

    id: str
    permissions: frozenset[str]
    user: User | None = None

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.user.id if self.user is not None else None

    def is_user(self, user_id: uuid.UUID) -> bool:
        return self.user_id == user_id

    def require(self, permissions: Iterable[str], detail: str) -> None:
        missing = set(permissions) - self.permissions
        if missing:
            raise PrivilegeEscalation(detail, missing)


SYSTEM = Actor(id=SYSTEM_ACTOR, permissions=frozenset(ALL_PERMISSIONS))


async def load_actor(session: AsyncSession, principal: Principal, *,
                     require: str | None = None) -> Actor:
    """The caller's current permissions: what their roles grant today, narrowed by the token
    (an API token may carry fewer). A deleted or disabled account acts no more."""
    user_id = parse_id(principal.subject)
    user = await session.get(User, user_id) if user_id is not None else None
    if user is None or not user.active:
        raise AccountUnavailable()
    permissions = user.permission_set & principal.permissions
    if require is not None and require not in permissions:
        raise Forbidden(f"Missing permission: {require}")
    return Actor(id=principal.subject, permissions=permissions, user=user)
