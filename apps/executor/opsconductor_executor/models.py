"""The executor's tables: executions, their targets, the ordered record of what they did, and the
sealed secret values an unfinished execution still needs."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsconductor_db.types import GUID, UTCDateTime, utcnow
from opsconductor_runtime.outbox import outbox_table, processed_events_table

ID_MAX = 64
NAME_MAX = 200
ACTOR_MAX = 128
OWNER_MAX = 100
ERROR_MAX = 1000

# Execution states. An execution is "final" once it can never change again.
QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELED, TIMED_OUT, INTERRUPTED = (
    "succeeded", "failed", "canceled", "timed_out", "interrupted")
EXECUTION_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, TIMED_OUT, INTERRUPTED)
ACTIVE = (QUEUED, RUNNING)
FINAL = (SUCCEEDED, FAILED, CANCELED, TIMED_OUT, INTERRUPTED)

# Target states within one execution.
PENDING = "pending"
TARGET_STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELED, INTERRUPTED)
# What retry-failed runs again.
RETRYABLE = (FAILED, TIMED_OUT, INTERRUPTED)

# Kinds of stored record (the SSE event names).
OUTPUT, STARTED, TARGET_FINISHED, FINISHED, STATUS = (
    "output", "started", "target_finished", "finished", "status")


class Base(DeclarativeBase):
    pass


outbox = outbox_table(Base.metadata)
processed_events = processed_events_table(Base.metadata)


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (Index("ix_executions_created_at_id", "created_at", "id"),
                      Index("ix_executions_job_id", "job_id"),
                      Index("ix_executions_status_lease", "status", "lease_until"))

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[str] = mapped_column(String(ID_MAX))
    job_name: Mapped[str] = mapped_column(String(NAME_MAX))
    job_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    trigger: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(ACTOR_MAX))
    retry_of: Mapped[uuid.UUID | None] = mapped_column(GUID, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    # The job as it was when the run was asked for (RunRequest without the secret values).
    spec: Mapped[str] = mapped_column(Text)
    # Names (never values) of the secret parameters this run was given; retry-failed asks again.
    secret_names: Mapped[str] = mapped_column(Text, default="[]")
    total_targets: Mapped[int] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # started_at + the job's timeout: a replica that takes over keeps the original deadline.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    # The replica running it and until when that claim holds without a renewal.
    owner: Mapped[str | None] = mapped_column(String(OWNER_MAX), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested_by: Mapped[str | None] = mapped_column(String(ACTOR_MAX), default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    error: Mapped[str | None] = mapped_column(String(ERROR_MAX), default=None)

    def __repr__(self) -> str:
        return f"Execution(id={self.id}, status={self.status!r})"


class ExecutionTarget(Base):
    __tablename__ = "execution_targets"
    __table_args__ = (Index("ix_execution_targets_position", "execution_id", "position"),)

    execution_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    protocol: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    error: Mapped[str | None] = mapped_column(String(ERROR_MAX), default=None)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Crash recovery: the step sent to the target whose end was not seen yet, and the first
    # step not known to be done (where a run that lost its replica resumes).
    inflight_step: Mapped[int | None] = mapped_column(Integer, default=None)
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    # The last step whose end was seen (next_step == last_step: it failed).
    last_step: Mapped[int | None] = mapped_column(Integer, default=None)


class ExecutionRecord(Base):
    """One numbered entry of an execution's stream: an output chunk or a status change."""

    __tablename__ = "execution_records"
    __table_args__ = (Index("ix_execution_records_target", "execution_id", "target_id", "seq"),)

    execution_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[str | None] = mapped_column(String(ID_MAX), default=None)
    stream: Mapped[str | None] = mapped_column(String(8), default=None)
    # The chunk's text for output; the event payload as JSON for status records.
    data: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def has_secrets(execution: Execution) -> bool:
    """Whether the run was given secret values (they are sealed with their names kept)."""
    return bool(json.loads(execution.secret_names))


class ExecutionSecret(Base):
    """Secret parameter values, AES-256-GCM sealed; the row is deleted when the run is final."""

    __tablename__ = "execution_secrets"

    execution_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"ExecutionSecret(execution_id={self.execution_id})"
