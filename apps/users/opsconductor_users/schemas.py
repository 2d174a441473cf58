"""Request and response shapes. Requests are strict and closed; no response carries a hash."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from opsconductor_contracts.permissions import ALL_PERMISSIONS
from opsconductor_users.models import (
    DESCRIPTION_MAX,
    EMAIL_MAX,
    FULL_NAME_MAX,
    ROLE_NAME_MAX,
    USERNAME_MAX,
)

USERNAME_RE = re.compile(r"^[a-z0-9._-]{3,64}$")
ROLE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Generous bound so the policy (not the schema) explains a too-long password.
PASSWORD_INPUT_MAX = 1024

RoleName = Annotated[str, StringConstraints(max_length=ROLE_NAME_MAX)]
Password = Annotated[str, StringConstraints(max_length=PASSWORD_INPUT_MAX)]
_KNOWN = frozenset(ALL_PERMISSIONS)


def normalize_username(value: str) -> str:
    value = value.strip().lower()
    if not USERNAME_RE.match(value):
        raise ValueError("use 3 to 64 characters of a-z, 0-9, '.', '_' or '-'")
    return value


def _normalize_role_name(value: str) -> str:
    value = value.strip().lower()
    if not ROLE_NAME_RE.match(value):
        raise ValueError("use 1 to 64 characters of a-z, 0-9, '.', '_' or '-'")
    return value


def _normalize_email(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not EMAIL_RE.match(value):
        raise ValueError("not an email address")
    return value


def _normalize_permissions(values: list[str]) -> list[str]:
    unknown = sorted(set(values) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown permission: {', '.join(unknown)}")
    return sorted(set(values))


def _role_names(values: list[str]) -> list[str]:
    return sorted({v.strip().lower() for v in values})


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- users -----------------------------------------------------------------------------------

class UserCreate(_Request):
    username: Annotated[str, StringConstraints(max_length=USERNAME_MAX + 16)]
    password: Password = Field(repr=False)  # repr=False: never in logs or tracebacks
    email: Annotated[str, StringConstraints(max_length=EMAIL_MAX)] | None = None
    full_name: Annotated[str, StringConstraints(max_length=FULL_NAME_MAX)] | None = None
    roles: list[RoleName] = Field(default_factory=list, max_length=50)

    _username = field_validator("username")(normalize_username)
    _email = field_validator("email")(_normalize_email)
    _roles = field_validator("roles")(_role_names)


class UserUpdate(_Request):
    email: Annotated[str, StringConstraints(max_length=EMAIL_MAX)] | None = None
    full_name: Annotated[str, StringConstraints(max_length=FULL_NAME_MAX)] | None = None
    roles: list[RoleName] | None = Field(default=None, max_length=50)
    active: bool | None = None

    _email = field_validator("email")(_normalize_email)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str] | None) -> list[str]:
        # Validators run only on given values: None here is an explicit null.
        if value is None:
            raise ValueError("may be left out but not null")
        return _role_names(value)

    @field_validator("active")
    @classmethod
    def _active(cls, value: bool | None) -> bool:
        if value is None:
            raise ValueError("may be left out but not null")
        return value


class PasswordChange(_Request):
    current_password: Password | None = Field(default=None, repr=False)
    new_password: Password = Field(repr=False)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    email: str | None
    full_name: str | None
    roles: list[str]
    permissions: list[str]
    active: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime
    last_login_at: datetime | None
    last_action_at: datetime | None
    login_count: int

    @model_validator(mode="before")
    @classmethod
    def _from_model(cls, data: Any) -> Any:
        if isinstance(data, dict) or not hasattr(data, "role_names"):
            return data
        return {name: getattr(data, name) for name in cls.model_fields if name != "roles"} | {
            "roles": data.role_names}


class MeRead(BaseModel):
    id: uuid.UUID
    username: str
    email: str | None
    full_name: str | None
    roles: list[str]
    permissions: list[str]
    last_login_at: datetime | None


class UserPage(BaseModel):
    items: list[UserRead]
    next_cursor: str | None


# --- roles -----------------------------------------------------------------------------------

class RoleCreate(_Request):
    name: RoleName
    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] = ""
    permissions: list[Annotated[str, StringConstraints(max_length=64)]] = Field(max_length=100)

    _name = field_validator("name")(_normalize_role_name)
    _permissions = field_validator("permissions")(_normalize_permissions)


class RoleUpdate(_Request):
    name: RoleName | None = None
    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] | None = None
    permissions: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        default=None, max_length=100)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _normalize_role_name(value)

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _normalize_permissions(value)


class RoleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str
    permissions: list[str]
    builtin: bool
    created_at: datetime
    updated_at: datetime

    @field_validator("permissions")
    @classmethod
    def _known_only(cls, value: list[str]) -> list[str]:
        return sorted(set(value) & _KNOWN)


class RolePage(BaseModel):
    items: list[RoleRead]
    next_cursor: str | None


# --- internal (service to service) -----------------------------------------------------------

class CredentialsCheck(_Request):
    username: Annotated[str, StringConstraints(max_length=256)]
    password: Password = Field(repr=False)


class Identity(BaseModel):
    """Matches opsconductor_contracts.clients.users.VerifiedUser."""

    user_id: str
    username: str
    roles: list[str]
    permissions: list[str]
    active: bool
