"""The jobs service's tables: job definitions, every version of each, and dangerous-step approvals.

No run parameter value is ever stored here (secret or not): runs go straight to the executor.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsconductor_db.types import GUID, UTCDateTime, utcnow
from opsconductor_runtime.outbox import outbox_table, processed_events_table

NAME_MAX = 128
DESCRIPTION_MAX = 2000
PRINCIPAL_MAX = 64
STEP_NAME_MAX = 200


class Base(DeclarativeBase):
    pass


outbox = outbox_table(Base.metadata)
processed_events = processed_events_table(Base.metadata)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_created_at_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    # Lower-cased name: uniqueness is case-insensitive on every database.
    name_key: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX), default="")
    owner_id: Mapped[str] = mapped_column(String(PRINCIPAL_MAX))
    version: Mapped[int] = mapped_column(Integer, default=1)
    # steps, parameters, targets, concurrency, timeout_s, retry, run_roles (schemas.Definition).
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(PRINCIPAL_MAX))

    def __repr__(self) -> str:
        return f"Job(id={self.id}, name={self.name!r}, version={self.version})"


class JobVersion(Base):
    """The full definition as it was at one version (the current one included)."""

    __tablename__ = "job_versions"
    __table_args__ = (UniqueConstraint("job_id", "version", name="uq_job_versions_job_version"),
                      Index("ix_job_versions_job_created", "job_id", "created_at", "id"))

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("jobs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX), default="")
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Field names that differ from the previous version ([] for the first).
    changed: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(PRINCIPAL_MAX))


class Approval(Base):
    """An approver accepted one step's exact text (by SHA-256) despite the rules it matches."""

    __tablename__ = "job_approvals"
    __table_args__ = (UniqueConstraint("job_id", "step_name", "step_sha256",
                                       name="uq_job_approvals_step"),
                      Index("ix_job_approvals_job", "job_id"))

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("jobs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)  # the job's version when approved
    step_name: Mapped[str] = mapped_column(String(STEP_NAME_MAX))
    step_sha256: Mapped[str] = mapped_column(String(64))
    rules: Mapped[list[str]] = mapped_column(JSON, default=list)
    approved_by: Mapped[str] = mapped_column(String(PRINCIPAL_MAX))
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
