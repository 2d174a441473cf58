"""The targets service's tables: targets, their tags, sealed credentials and health history."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from opsconductor_db.types import GUID, UTCDateTime, utcnow
from opsconductor_runtime.outbox import outbox_table, processed_events_table

NAME_MAX = 128
HOST_MAX = 253
USERNAME_MAX = 128
OS_MAX = 64
DESCRIPTION_MAX = 500
TAG_MAX = 64
FINGERPRINT_MAX = 64
MESSAGE_MAX = 500

# Health states, from nothing known to not answering.
UNKNOWN, HEALTHY, DEGRADED, UNREACHABLE = "unknown", "healthy", "degraded", "unreachable"
STATUSES = (UNKNOWN, HEALTHY, DEGRADED, UNREACHABLE)
DEFAULT_PORTS = {"ssh": 22, "winrm": 5986}


class Base(DeclarativeBase):
    pass


outbox = outbox_table(Base.metadata)
processed_events = processed_events_table(Base.metadata)


class TargetTag(Base):
    __tablename__ = "target_tags"
    __table_args__ = (Index("ix_target_tags_tag", "tag"),)

    target_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(TAG_MAX), primary_key=True)


class Target(Base):
    __tablename__ = "targets"
    __table_args__ = (Index("ix_targets_created_at_id", "created_at", "id"),
                      Index("ix_targets_status", "status"))

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    # Lower-cased name: uniqueness is case-insensitive on every database.
    name_key: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    host: Mapped[str] = mapped_column(String(HOST_MAX))
    port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(8))
    os: Mapped[str | None] = mapped_column(String(OS_MAX), default=None)
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX), default="")
    username: Mapped[str] = mapped_column(String(USERNAME_MAX))

    winrm_transport: Mapped[str | None] = mapped_column(String(8), default=None)
    winrm_scheme: Mapped[str | None] = mapped_column(String(8), default=None)
    winrm_verify_tls: Mapped[bool | None] = mapped_column(Boolean, default=None)

    # What is known about the secret without opening it.
    credential_type: Mapped[str | None] = mapped_column(String(16), default=None)
    credential_version: Mapped[int] = mapped_column(Integer, default=0)
    credential_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    # The operator-approved host key, and the last key the server presented (for approval).
    host_key_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_MAX), default=None)
    host_key: Mapped[str | None] = mapped_column(Text, default=None)
    host_key_pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    presented_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_MAX),
                                                              default=None)
    presented_host_key: Mapped[str | None] = mapped_column(Text, default=None)
    presented_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    status: Mapped[str] = mapped_column(String(16), default=UNKNOWN)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_check_stage: Mapped[str | None] = mapped_column(String(16), default=None)
    last_check_message: Mapped[str | None] = mapped_column(String(MESSAGE_MAX), default=None)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tag_rows: Mapped[list[TargetTag]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by=TargetTag.tag)

    @property
    def tags(self) -> list[str]:
        return [t.tag for t in self.tag_rows]

    @property
    def has_credential(self) -> bool:
        return self.credential_type is not None

    def __repr__(self) -> str:
        return f"Target(id={self.id}, name={self.name!r}, host={self.host!r})"


class Credential(Base):
    """The sealed secret of one target (its id is the target's: the id is the cipher's AAD)."""

    __tablename__ = "credentials"
    __table_args__ = (Index("ix_credentials_key_id", "key_id"),)

    target_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"Credential(target_id={self.target_id}, key_id={self.key_id!r})"


class HealthCheck(Base):
    """One reachability check (health sweep or connection test) of one target."""

    __tablename__ = "target_health"
    __table_args__ = (Index("ix_target_health_target_checked", "target_id", "checked_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    target_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("targets.id", ondelete="CASCADE"))
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    stage: Mapped[str | None] = mapped_column(String(16), default=None)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(MESSAGE_MAX), default="")
    source: Mapped[str] = mapped_column(String(16), default="health")  # health | test
