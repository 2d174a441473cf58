"""HTTP only: parse, authorise at the door, call the service, shape the answer."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from opsconductor_contracts.permissions import ALL_PERMISSIONS, ROLES_WRITE, USERS_READ, USERS_WRITE
from opsconductor_core.problems import Forbidden
from opsconductor_core.security import CurrentPrincipal, Principal
from opsconductor_db.deps import Session
from opsconductor_db.repository import DEFAULT_LIMIT, MAX_LIMIT
from opsconductor_users.access import Actor, load_actor
from opsconductor_users.roles import RolesService
from opsconductor_users.schemas import (
    CredentialsCheck,
    Identity,
    MeRead,
    PasswordChange,
    RoleCreate,
    RolePage,
    RoleRead,
    RoleUpdate,
    UserCreate,
    UserPage,
    UserRead,
    UserUpdate,
)
from opsconductor_users.service import UsersService

router = APIRouter(tags=["users"])
internal_router = APIRouter(tags=["internal"], include_in_schema=False)


async def _users(request: Request, session: Session) -> UsersService:
    return UsersService(session, request.app.state.publisher, request.app.state.passwords)


async def _roles(request: Request, session: Session) -> RolesService:
    return RolesService(session, request.app.state.publisher)


def _acting(permission: str) -> Callable[..., Awaitable[Actor]]:
    """The token must carry `permission` (cheap, first) and the account must still hold it."""

    async def _actor(principal: CurrentPrincipal, session: Session) -> Actor:
        if not principal.can(permission):
            raise Forbidden(f"Missing permission: {permission}")
        return await load_actor(session, principal, require=permission)

    return _actor


async def _reader(principal: CurrentPrincipal) -> Principal:
    if not principal.can(USERS_READ):
        raise Forbidden(f"Missing permission: {USERS_READ}")
    return principal


Users = Annotated[UsersService, Depends(_users)]
Roles = Annotated[RolesService, Depends(_roles)]
Reader = Annotated[Principal, Depends(_reader)]
UserWriter = Annotated[Actor, Depends(_acting(USERS_WRITE))]
RoleWriter = Annotated[Actor, Depends(_acting(ROLES_WRITE))]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]


# --- users -----------------------------------------------------------------------------------

@router.get("/users/me", response_model=MeRead)
async def read_me(principal: CurrentPrincipal, users: Users) -> MeRead:
    return await users.me(principal)


@router.get("/users", response_model=UserPage)
async def list_users(
    _: Reader, users: Users,
    q: Annotated[str | None, Query(max_length=200)] = None,
    role: Annotated[str | None, Query(max_length=64)] = None,
    active: bool | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> UserPage:
    page = await users.search(q=q, role=role, active=active, limit=limit, cursor=cursor)
    return UserPage(items=[UserRead.model_validate(u) for u in page.items],
                    next_cursor=page.next_cursor)


@router.post("/users", response_model=UserRead, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, actor: UserWriter, users: Users) -> UserRead:
    return UserRead.model_validate(await users.create(actor, body))


@router.get("/users/{user_id}", response_model=UserRead)
async def read_user(user_id: uuid.UUID, principal: CurrentPrincipal, users: Users) -> UserRead:
    return UserRead.model_validate(await users.get(principal, user_id))


@router.patch("/users/{user_id}", response_model=UserRead)
async def update_user(user_id: uuid.UUID, body: UserUpdate, principal: CurrentPrincipal,
                      users: Users) -> UserRead:
    return UserRead.model_validate(await users.update(principal, user_id, body))


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(user_id: uuid.UUID, principal: CurrentPrincipal, users: Users) -> Response:
    await users.delete(principal, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users/{user_id}/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(user_id: uuid.UUID, body: PasswordChange, principal: CurrentPrincipal,
                          users: Users) -> Response:
    await users.change_password(principal, user_id, body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- roles -----------------------------------------------------------------------------------

@router.get("/roles/permissions", response_model=list[str])
async def list_permissions(_: CurrentPrincipal) -> list[str]:
    return list(ALL_PERMISSIONS)


@router.get("/roles", response_model=RolePage)
async def list_roles(_: Reader, roles: Roles, limit: Limit = DEFAULT_LIMIT,
                     cursor: Cursor = None) -> RolePage:
    page = await roles.search(limit=limit, cursor=cursor)
    return RolePage(items=[RoleRead.model_validate(r) for r in page.items],
                    next_cursor=page.next_cursor)


@router.post("/roles", response_model=RoleRead, status_code=status.HTTP_201_CREATED)
async def create_role(body: RoleCreate, actor: RoleWriter, roles: Roles) -> RoleRead:
    return RoleRead.model_validate(await roles.create(actor, body))


@router.get("/roles/{role_id}", response_model=RoleRead)
async def read_role(role_id: uuid.UUID, _: Reader, roles: Roles) -> RoleRead:
    return RoleRead.model_validate(await roles.get(role_id))


@router.patch("/roles/{role_id}", response_model=RoleRead)
async def update_role(role_id: uuid.UUID, body: RoleUpdate, actor: RoleWriter,
                      roles: Roles) -> RoleRead:
    return RoleRead.model_validate(await roles.update(actor, role_id, body))


@router.delete("/roles/{role_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_role(role_id: uuid.UUID, actor: RoleWriter, roles: Roles) -> Response:
    await roles.delete(actor, role_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- service to service (no user token; the gateway never forwards /internal) --------------

@internal_router.post("/internal/credentials/verify", response_model=Identity)
async def verify_credentials(body: CredentialsCheck, users: Users) -> Identity:
    return await users.verify_credentials(body.username, body.password)


@internal_router.get("/internal/users/{user_id}/identity", response_model=Identity)
async def read_identity(user_id: Annotated[str, Path(max_length=64)], users: Users) -> Identity:
    return await users.identity(user_id)
