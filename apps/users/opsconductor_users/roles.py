"""Every rule about roles: built-ins stay, nobody hands out permissions they lack."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

import opsconductor_contracts.topics as topics
from opsconductor_contracts.events import RoleChanged, UserUpdated
from opsconductor_contracts.permissions import ALL_PERMISSIONS, BUILTIN_ROLES
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_db.repository import DEFAULT_LIMIT, Page
from opsconductor_db.types import utcnow
from opsconductor_users.access import SYSTEM, Actor
from opsconductor_users.exceptions import BuiltinRoleProtected, RoleNameTaken, RoleNotFound
from opsconductor_users.models import Role
from opsconductor_users.repository import ADMIN_ROLE, RoleRepository, UserRepository
from opsconductor_users.schemas import RoleCreate, RoleUpdate

BUILTIN_DESCRIPTIONS = {
    "admin": "Everything, including users and roles",
    "operator": "Manage targets, credentials, jobs and schedules; run and cancel executions",
    "viewer": "Read targets, jobs, executions and schedules",
    "auditor": "Read and export the audit trail; read everything else",
}


async def ensure_builtin_roles(session: AsyncSession, publisher: EventPublisher | None = None
                               ) -> None:
    """Idempotent seeding on every start: missing built-ins are created, and admin is kept at
    every permission this release knows. Operators' edits to the other built-ins are kept."""
    rows = await session.scalars(select(Role).where(Role.name.in_(list(BUILTIN_ROLES))))
    existing = {r.name: r for r in rows}
    for name, permissions in BUILTIN_ROLES.items():
        role = existing.get(name)
        if role is None:
            now = utcnow()
            role = Role(name=name, description=BUILTIN_DESCRIPTIONS.get(name, ""),
                        permissions=sorted(permissions), builtin=True, created_at=now,
                        updated_at=now)
            try:
                async with session.begin_nested():
                    session.add(role)
            except IntegrityError:
                continue  # another replica seeded it at the same moment
            change = "created"
        elif name == ADMIN_ROLE and set(role.permissions) != set(ALL_PERMISSIONS):
            role.permissions = sorted(ALL_PERMISSIONS)
            role.updated_at = utcnow()
            await session.flush()
            change = "updated"
        else:
            continue
        if publisher is not None:
            await publisher.emit(session, topics.ROLE_CHANGED,
                                 RoleChanged(role_id=str(role.id), name=role.name, change=change,
                                             permissions=sorted(role.permission_set)),
                                 actor=SYSTEM.id, resource_type="role", resource_id=str(role.id))


class RolesService:
    def __init__(self, session: AsyncSession, publisher: EventPublisher) -> None:
        self.session = session
        self.publisher = publisher
        self.roles = RoleRepository(session)
        self.users = UserRepository(session)

    async def search(self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Role]:
        return await self.roles.search(limit=limit, cursor=cursor)

    async def get(self, role_id: uuid.UUID) -> Role:
        role = await self.roles.get(role_id)
        if role is None:
            raise RoleNotFound()
        return role

    async def create(self, actor: Actor, data: RoleCreate) -> Role:
        actor.require(data.permissions, "You cannot create a role with permissions you lack")
        if await self.roles.by_name(data.name) is not None:
            raise RoleNameTaken(data.name)
        now = utcnow()
        role = Role(name=data.name, description=data.description, permissions=data.permissions,
                    builtin=False, created_at=now, updated_at=now)
        try:
            await self.roles.add(role)
        except IntegrityError:
            raise RoleNameTaken(data.name) from None
        await self._emit(actor, role, "created")
        return role

    async def update(self, actor: Actor, role_id: uuid.UUID, data: RoleUpdate) -> Role:
        role = await self.get(role_id)
        permissions = role.permissions if data.permissions is None else data.permissions
        # Both old and new: removing a permission you lack from others' role is also refused.
        actor.require(role.permission_set | set(permissions),
                      "You cannot change a role with permissions you lack")
        changed = False
        if data.name is not None and data.name != role.name:
            if role.builtin:
                raise BuiltinRoleProtected("Built-in roles cannot be renamed")
            if await self.roles.by_name(data.name) is not None:
                raise RoleNameTaken(data.name)
            role.name = data.name
            changed = True
        if set(permissions) != set(role.permissions):
            if role.builtin and role.name == ADMIN_ROLE:
                raise BuiltinRoleProtected("The admin role always holds every permission")
            role.permissions = sorted(permissions)
            changed = True
        if data.description is not None and data.description != role.description:
            role.description = data.description
            changed = True
        if not changed:
            return role
        role.updated_at = utcnow()
        try:
            await self.session.flush()
        except IntegrityError:
            raise RoleNameTaken(role.name) from None
        await self._emit(actor, role, "updated")
        return role

    async def delete(self, actor: Actor, role_id: uuid.UUID) -> None:
        role = await self.get(role_id)
        if role.builtin:
            raise BuiltinRoleProtected("Built-in roles cannot be deleted")
        actor.require(role.permission_set, "You cannot delete a role with permissions you lack")
        # Holders lose the role: their sessions end, like any other reduction of roles.
        for user in await self.users.holders_of(role.id):
            user.roles = [r for r in user.roles if r.id != role.id]
            user.updated_at = utcnow()
            await self._emit(actor, role, "revoked", user_id=str(user.id))
            await self.publisher.emit(
                self.session, topics.USER_UPDATED,
                UserUpdated(user_id=str(user.id), username=user.username, changed=["roles"],
                            active=user.active, sessions_revoked=True),
                actor=actor.id, resource_type="user", resource_id=str(user.id))
        await self.roles.delete(role)
        await self._emit(actor, role, "deleted")

    async def _emit(self, actor: Actor, role: Role, change: str, *,
                    user_id: str | None = None) -> None:
        await self.publisher.emit(
            self.session, topics.ROLE_CHANGED,
            RoleChanged(role_id=str(role.id), name=role.name, change=change,
                        permissions=sorted(role.permission_set), user_id=user_id),
            actor=actor.id, resource_type="role", resource_id=str(role.id))
