"""SQL of the users service. Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, literal, select, update
from sqlalchemy.orm import InstrumentedAttribute, joinedload
from sqlalchemy.sql.elements import ColumnElement

from opsconductor_db.repository import DEFAULT_LIMIT, Page, Repository
from opsconductor_db.types import UTCDateTime
from opsconductor_users.models import Role, User, user_roles

ADMIN_ROLE = "admin"


def _later(column: InstrumentedAttribute[datetime | None], at: datetime) -> ColumnElement[Any]:
    """The later of the stored time and `at`, so out-of-order deliveries never move it back."""
    value = literal(at, UTCDateTime())
    return case((column.is_(None), value), (column < value, value), else_=column)


class UserRepository(Repository[User]):
    model = User

    async def get(self, row_id: uuid.UUID) -> User | None:
        # One joined query instead of the mapping's two (user, then its roles): the hot path of
        # every authenticated request that looks up its caller.
        stmt = select(User).options(joinedload(User.roles)).where(User.id == row_id)
        return (await self.session.scalars(stmt)).unique().one_or_none()

    async def by_username(self, username: str) -> User | None:
        return await self.session.scalar(select(User).where(User.username == username.lower()))

    async def any_exists(self) -> bool:
        return await self.session.scalar(select(User.id).limit(1)) is not None

    async def search(self, *, q: str | None = None, role: str | None = None,
                     active: bool | None = None, limit: int = DEFAULT_LIMIT,
                     cursor: str | None = None) -> Page[User]:
        stmt = select(User)
        if q:
            needle = q.strip()
            stmt = stmt.where(User.username.icontains(needle, autoescape=True)
                              | User.email.icontains(needle, autoescape=True)
                              | User.full_name.icontains(needle, autoescape=True))
        if role:
            stmt = stmt.where(User.roles.any(Role.name == role.strip().lower()))
        if active is not None:
            stmt = stmt.where(User.active.is_(active))
        return await self.page(stmt, limit=limit, cursor=cursor)

    async def holders_of(self, role_id: uuid.UUID) -> Sequence[User]:
        stmt = (select(User).join(user_roles, user_roles.c.user_id == User.id)
                .where(user_roles.c.role_id == role_id).order_by(User.username))
        return (await self.session.scalars(stmt)).all()

    async def count_active_admins(self, *, lock: bool = True) -> int:
        if lock:
            # Serialises every change that could drop the last admin (a no-op on SQLite,
            # whose single writer already serialises them).
            await self.session.execute(
                select(Role.id).where(Role.name == ADMIN_ROLE).with_for_update())
        stmt = (select(func.count(func.distinct(User.id))).select_from(User)
                .join(user_roles, user_roles.c.user_id == User.id)
                .join(Role, Role.id == user_roles.c.role_id)
                .where(Role.name == ADMIN_ROLE, User.active.is_(True)))
        return int(await self.session.scalar(stmt) or 0)

    async def record_login(self, user_id: uuid.UUID, at: datetime) -> bool:
        """Atomic in SQL, so concurrent deliveries for one user never lose a count."""
        result = await self.session.execute(
            update(User).where(User.id == user_id)
            .values(login_count=User.login_count + 1,
                    last_login_at=_later(User.last_login_at, at))
            .execution_options(synchronize_session=False))
        return bool(getattr(result, "rowcount", 0))

    async def record_action(self, user_id: uuid.UUID, at: datetime) -> bool:
        result = await self.session.execute(
            update(User).where(User.id == user_id)
            .values(last_action_at=_later(User.last_action_at, at))
            .execution_options(synchronize_session=False))
        return bool(getattr(result, "rowcount", 0))


class RoleRepository(Repository[Role]):
    model = Role

    async def by_name(self, name: str) -> Role | None:
        return await self.session.scalar(select(Role).where(Role.name == name.lower()))

    async def by_names(self, names: Sequence[str]) -> list[Role]:
        if not names:
            return []
        stmt = select(Role).where(Role.name.in_([n.lower() for n in names])).order_by(Role.name)
        return list((await self.session.scalars(stmt)).all())

    async def all_names(self) -> set[str]:
        return set((await self.session.scalars(select(Role.name))).all())

    async def search(self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Role]:
        return await self.page(select(Role), limit=limit, cursor=cursor)
