"""The users service's tables: users, roles and who holds which role."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Boolean, Column, ForeignKey, Index, Integer, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from opsconductor_contracts.permissions import ALL_PERMISSIONS
from opsconductor_db.types import GUID, UTCDateTime, utcnow
from opsconductor_runtime.outbox import outbox_table, processed_events_table

USERNAME_MAX = 64
ROLE_NAME_MAX = 64
EMAIL_MAX = 254
FULL_NAME_MAX = 200
DESCRIPTION_MAX = 500


class Base(DeclarativeBase):
    pass


outbox = outbox_table(Base.metadata)
processed_events = processed_events_table(Base.metadata)

user_roles = Table(
    "user_roles", Base.metadata,
    Column("user_id", GUID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", GUID, ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_user_roles_role_id", "role_id"),
)


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(ROLE_NAME_MAX), unique=True)
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX), default="")
    # Permission strings from contracts.permissions; always replaced, never mutated in place.
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def permission_set(self) -> frozenset[str]:
        # Drops strings a newer release no longer knows, so they grant nothing.
        return frozenset(self.permissions or ()) & frozenset(ALL_PERMISSIONS)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_created_at_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    # Stored lower-cased, so uniqueness is case-insensitive on every database.
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    email: Mapped[str | None] = mapped_column(String(EMAIL_MAX), default=None)
    full_name: Mapped[str | None] = mapped_column(String(FULL_NAME_MAX), default=None)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_action_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    login_count: Mapped[int] = mapped_column(Integer, default=0)

    roles: Mapped[list[Role]] = relationship(secondary=user_roles, lazy="selectin",
                                             order_by=Role.name)

    @property
    def role_names(self) -> list[str]:
        return sorted(r.name for r in self.roles)

    @property
    def permission_set(self) -> frozenset[str]:
        perms: frozenset[str] = frozenset()
        for role in self.roles:
            perms |= role.permission_set
        return perms

    @property
    def permissions(self) -> list[str]:
        return sorted(self.permission_set)

    def __repr__(self) -> str:  # never the hash
        return f"User(id={self.id}, username={self.username!r}, active={self.active})"
