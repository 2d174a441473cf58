"""Request and response shapes of the auth API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

from opsconductor_contracts.permissions import ALL_PERMISSIONS


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LoginRequest(_Request):
    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1024, repr=False)


class RefreshRequest(_Request):
    refresh_token: str = Field(min_length=1, max_length=512, repr=False)


class LogoutRequest(_Request):
    refresh_token: str = Field(min_length=1, max_length=512, repr=False)


class TokenPair(BaseModel):
    access_token: str = Field(repr=False)
    refresh_token: str = Field(repr=False)
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type
    expires_in: int


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


class ApiTokenCreate(_Request):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int = Field(ge=1, le=365)
    permissions: list[str] | None = Field(default=None, max_length=len(ALL_PERMISSIONS))

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("permissions")
    @classmethod
    def _known_permissions(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(ALL_PERMISSIONS))
        if unknown:
            raise ValueError(f"unknown permissions: {', '.join(unknown)}")
        return sorted(set(value))


class ApiTokenRead(BaseModel):
    """An API token as listed: never its value."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    # null: the token carries whatever permissions its owner holds when it is used.
    permissions: list[str] | None
    expires_at: Timestamp
    created_at: Timestamp
    last_used_at: Timestamp | None = None


class ApiTokenCreated(ApiTokenRead):
    """Returned once, at creation: the only time the token value is shown."""

    token: str = Field(repr=False)


class ApiTokenPage(BaseModel):
    items: list[ApiTokenRead]
    next_cursor: str | None


class IntrospectRequest(_Request):
    token: str = Field(min_length=1, max_length=512, repr=False)


class Introspection(BaseModel):
    """Matches `AuthClient.introspect_api_token` (libs/contracts)."""

    active: bool
    token_id: str | None = None
    user_id: str | None = None
    username: str | None = None
    roles: list[str] | None = None
    permissions: list[str] | None = None
    expires_at: int | None = None
