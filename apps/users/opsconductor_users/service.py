"""Every rule about users: who may create, change, disable or delete whom; first-start admin."""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

import opsconductor_contracts.topics as topics
from opsconductor_contracts.events import RoleChanged, UserCreated, UserDeleted, UserUpdated
from opsconductor_contracts.permissions import USERS_READ, USERS_WRITE
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.problems import Forbidden, InvalidInput
from opsconductor_core.security import Principal
from opsconductor_db.database import ServiceDatabase
from opsconductor_db.repository import DEFAULT_LIMIT, Page
from opsconductor_db.types import utcnow
from opsconductor_users.access import SYSTEM, Actor, load_actor, parse_id
from opsconductor_users.exceptions import (
    AccountUnavailable,
    InvalidCredentials,
    LastAdmin,
    SelfAction,
    UnknownRoles,
    UsernameTaken,
    UserNotFound,
    WeakPassword,
    WrongCurrentPassword,
)
from opsconductor_users.models import Role, User
from opsconductor_users.passwords import Passwords, check_password_policy
from opsconductor_users.repository import ADMIN_ROLE, RoleRepository, UserRepository
from opsconductor_users.roles import ensure_builtin_roles
from opsconductor_users.schemas import (
    Identity,
    MeRead,
    PasswordChange,
    UserCreate,
    UserRead,
    UserUpdate,
)

log = logging.getLogger("opsconductor.users")

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_FILE = "admin-password.txt"  # noqa: S105 - a file name, not a password


def identity_of(user: User) -> Identity:
    return Identity(user_id=str(user.id), username=user.username, roles=user.role_names,
                    permissions=user.permissions, active=user.active)


class UsersService:
    def __init__(self, session: AsyncSession, publisher: EventPublisher,
                 passwords: Passwords) -> None:
        self.session = session
        self.publisher = publisher
        self.passwords = passwords
        self.users = UserRepository(session)
        self.roles = RoleRepository(session)

    # --- reads -------------------------------------------------------------------------------

    async def me(self, principal: Principal) -> MeRead:
        user = await self._get(parse_id(principal.subject), missing=AccountUnavailable)
        if not user.active:
            raise AccountUnavailable()
        return MeRead(id=user.id, username=user.username, email=user.email,
                      full_name=user.full_name, roles=user.role_names,
                      permissions=user.permissions, last_login_at=user.last_login_at)

    async def search(self, *, q: str | None, role: str | None, active: bool | None,
                     limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[User]:
        return await self.users.search(q=q, role=role, active=active, limit=limit, cursor=cursor)

    async def get(self, principal: Principal, user_id: uuid.UUID) -> User:
        # Permission first, so a caller without users:read cannot probe which ids exist.
        if principal.subject != str(user_id) and not principal.can(USERS_READ):
            raise Forbidden(f"Missing permission: {USERS_READ}")
        return await self._get(user_id)

    # --- writes ------------------------------------------------------------------------------

    async def create(self, actor: Actor, data: UserCreate) -> User:
        check_password_policy(data.username, data.password)
        roles = await self._resolve_roles(data.roles)
        for role in roles:
            actor.require(role.permission_set, f"You cannot grant the role {role.name!r}")
        if await self.users.by_username(data.username) is not None:
            raise UsernameTaken(data.username)
        now = utcnow()
        user = User(username=data.username, email=data.email, full_name=data.full_name,
                    password_hash=await self.passwords.hash(data.password), active=True,
                    created_at=now, updated_at=now, password_changed_at=now, login_count=0)
        user.roles = roles
        try:
            await self.users.add(user)
        except IntegrityError:
            raise UsernameTaken(data.username) from None
        await self._emit_user(topics.USER_CREATED, actor,
                              UserCreated(user_id=str(user.id), username=user.username,
                                          roles=user.role_names), user)
        for role in roles:
            await self._emit_grant(actor, role, user, "granted")
        return user

    async def update(self, principal: Principal, user_id: uuid.UUID, data: UserUpdate) -> User:
        fields = data.model_fields_set
        is_self = principal.subject == str(user_id)
        # You may edit your own name and email; roles, state and other people need users:write.
        needs_write = not is_self or bool(fields & {"roles", "active"})
        actor = await load_actor(self.session, principal,
                                 require=USERS_WRITE if needs_write else None)
        user = await self._get(user_id)
        self._require_over(actor, user)

        # Decide everything first, then change: a refusal leaves nothing half-applied.
        changed: list[str] = []
        if "email" in fields and data.email != user.email:
            changed.append("email")
        if "full_name" in fields and data.full_name != user.full_name:
            changed.append("full_name")
        current = {r.name: r for r in user.roles}
        target = current
        if data.roles is not None:
            target = {r.name: r for r in await self._resolve_roles(data.roles)}
        granted = [target[n] for n in sorted(target.keys() - current.keys())]
        revoked = [current[n] for n in sorted(current.keys() - target.keys())]
        for role in granted:
            actor.require(role.permission_set, f"You cannot grant the role {role.name!r}")
        if granted or revoked:
            changed.append("roles")
        active = user.active if data.active is None else data.active
        if active != user.active:
            changed.append("active")
            if not active and is_self:
                raise SelfAction("You cannot disable your own account")
        if user.active and ADMIN_ROLE in current and not (active and ADMIN_ROLE in target):
            await self._require_other_admin()
        if not changed:
            return user

        if "email" in changed:
            user.email = data.email
        if "full_name" in changed:
            user.full_name = data.full_name
        if "roles" in changed:
            user.roles = [target[n] for n in sorted(target)]
        user.active = active
        user.updated_at = utcnow()
        await self.session.flush()
        sessions_revoked = bool(revoked) or ("active" in changed and not active)
        await self._emit_user(topics.USER_UPDATED, actor, UserUpdated(
            user_id=str(user.id), username=user.username, changed=changed, active=user.active,
            sessions_revoked=sessions_revoked), user)
        for role in granted:
            await self._emit_grant(actor, role, user, "granted")
        for role in revoked:
            await self._emit_grant(actor, role, user, "revoked")
        return user

    async def delete(self, principal: Principal, user_id: uuid.UUID) -> None:
        actor = await load_actor(self.session, principal, require=USERS_WRITE)
        user = await self._get(user_id)
        if actor.is_user(user.id):
            raise SelfAction("You cannot delete your own account")
        self._require_over(actor, user)
        if user.active and ADMIN_ROLE in user.role_names:
            await self._require_other_admin()
        event = UserDeleted(user_id=str(user.id), username=user.username)
        await self.users.delete(user)
        await self.publisher.emit(self.session, topics.USER_DELETED, event, actor=actor.id,
                                  resource_type="user", resource_id=event.user_id)

    async def change_password(self, principal: Principal, user_id: uuid.UUID,
                              data: PasswordChange) -> None:
        is_self = principal.subject == str(user_id)
        actor = await load_actor(self.session, principal, require=None if is_self else USERS_WRITE)
        user = await self._get(user_id)
        if is_self:
            if not data.current_password:
                raise InvalidInput("Give your current password",
                                   errors={"current_password": "required for your own account"})
        else:
            self._require_over(actor, user)
        check_password_policy(user.username, data.new_password, field="new_password")
        if is_self and not await self.passwords.verify(user.password_hash,
                                                       data.current_password or ""):
            raise WrongCurrentPassword()
        now = utcnow()
        user.password_hash = await self.passwords.hash(data.new_password)
        user.password_changed_at = now
        user.updated_at = now
        await self.session.flush()
        await self._emit_user(topics.USER_UPDATED, actor, UserUpdated(
            user_id=str(user.id), username=user.username, changed=["password"],
            active=user.active, sessions_revoked=True), user)

    # --- service to service ------------------------------------------------------------------

    async def verify_credentials(self, username: str, password: str) -> Identity:
        """Unknown user, wrong password and disabled account all fail alike, in equal time."""
        user = await self.users.by_username(username.strip().lower())
        matched = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not matched or not user.active:
            raise InvalidCredentials()
        if self.passwords.needs_rehash(user.password_hash):
            # Cost settings changed since this hash was made; upgrade it while we know the password.
            user.password_hash = await self.passwords.hash(password)
            await self.session.flush()
        return identity_of(user)

    async def identity(self, user_id: str) -> Identity:
        return identity_of(await self._get(parse_id(user_id)))

    # --- helpers -----------------------------------------------------------------------------

    async def _get(self, user_id: uuid.UUID | None,
                   missing: type[Exception] = UserNotFound) -> User:
        user = await self.users.get(user_id) if user_id is not None else None
        if user is None:
            raise missing()
        return user

    async def _resolve_roles(self, names: list[str]) -> list[Role]:
        roles = await self.roles.by_names(names)
        unknown = sorted(set(names) - {r.name for r in roles})
        if unknown:
            raise UnknownRoles(unknown)
        return roles

    @staticmethod
    def _require_over(actor: Actor, user: User) -> None:
        """Acting on someone needs every permission they hold (no operator takes over an admin)."""
        if not actor.is_user(user.id):
            actor.require(user.permission_set,
                          f"You cannot change {user.username!r}, who holds permissions you lack")

    async def _require_other_admin(self) -> None:
        # The count still includes the user being changed: nothing is flushed yet.
        if await self.users.count_active_admins() < 2:
            raise LastAdmin()

    async def _emit_user(self, topic: str, actor: Actor, payload: UserCreated | UserUpdated,
                         user: User) -> None:
        await self.publisher.emit(self.session, topic, payload, actor=actor.id,
                                  resource_type="user", resource_id=str(user.id))

    async def _emit_grant(self, actor: Actor, role: Role, user: User, change: str) -> None:
        await self.publisher.emit(
            self.session, topics.ROLE_CHANGED,
            RoleChanged(role_id=str(role.id), name=role.name, change=change,
                        permissions=sorted(role.permission_set), user_id=str(user.id)),
            actor=actor.id, resource_type="role", resource_id=str(role.id))


# --- first start and the command line ---------------------------------------------------------

def _write_secret_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case the file already existed with a looser mode
        os.write(fd, (content + "\n").encode())
    finally:
        os.close(fd)


async def bootstrap_admin(db: ServiceDatabase, publisher: EventPublisher, *,
                          password: str | None, data_dir: Path,
                          passwords: Passwords | None = None) -> str | None:
    """Create `admin` when there is no user at all. Returns the password only if generated."""
    passwords = passwords or Passwords()
    async with db.transaction() as session:
        await ensure_builtin_roles(session, publisher)
        if await UserRepository(session).any_exists():
            return None
    generated = not password
    secret = password or secrets.token_urlsafe(18)
    try:
        check_password_policy(ADMIN_USERNAME, secret)
    except WeakPassword as exc:
        reason = (exc.errors or {}).get("password", "is not acceptable")
        raise RuntimeError(f"OPSC_ADMIN_PASSWORD {reason}") from None
    try:
        async with db.transaction() as session:
            if await UserRepository(session).any_exists():
                return None
            await UsersService(session, publisher, passwords).create(
                SYSTEM, UserCreate(username=ADMIN_USERNAME, password=secret, roles=[ADMIN_ROLE]))
    except (UsernameTaken, IntegrityError):
        return None  # another replica created it first
    log.info("created the first admin user", extra={"username": ADMIN_USERNAME})
    if not generated:
        return None
    try:
        _write_secret_file(data_dir / ADMIN_PASSWORD_FILE, secret)
    except OSError as exc:
        log.error("could not write the admin password file", extra={"error": type(exc).__name__})
    return secret


async def create_user_direct(db: ServiceDatabase, publisher: EventPublisher, *, username: str,
                             password: str, roles: list[str], email: str | None = None,
                             passwords: Passwords | None = None) -> UserRead:
    """For `opsconductor admin create-user`: no caller to check; the actor is "system"."""
    try:
        data = UserCreate(username=username, password=password, email=email, roles=list(roles))
    except ValidationError as exc:
        errors = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
        raise InvalidInput("The user is not valid", errors=errors) from None
    async with db.transaction() as session:
        await ensure_builtin_roles(session, publisher)
        user = await UsersService(session, publisher, passwords or Passwords()).create(SYSTEM, data)
        return UserRead.model_validate(user)
