"""Request and response shapes. Requests are strict and closed; no response carries a secret."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from opsconductor_contracts.jobspec import ParameterValue

ExecutionStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "timed_out",
                          "interrupted"]
TargetStatus = Literal["pending", "running", "succeeded", "failed", "timed_out", "canceled",
                       "interrupted"]
StreamEvent = Literal["output", "started", "target_finished", "finished", "status"]
SECRET_VALUE_MAX = 65_536


class Counts(BaseModel):
    """Targets per state; `failed` counts only failed targets, the other end states have their
    own numbers, so every field adds up to `total`."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0
    timed_out: int = 0
    canceled: int = 0
    interrupted: int = 0


class ExecutionRead(BaseModel):
    id: uuid.UUID
    job_id: str
    job_name: str
    job_version: int
    status: ExecutionStatus
    trigger: Literal["manual", "schedule", "api"]
    requested_by: str
    retry_of: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    error: str | None
    counts: Counts


class ExecutionPage(BaseModel):
    items: list[ExecutionRead]
    next_cursor: str | None


class TargetResultRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    target_id: str
    name: str
    protocol: Literal["ssh", "winrm"]
    status: TargetStatus
    exit_code: int | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    output_truncated: bool


class TargetResultPage(BaseModel):
    items: list[TargetResultRead]
    next_cursor: str | None


class OutputChunkRead(BaseModel):
    seq: int
    target_id: str
    stream: Literal["stdout", "stderr", "system"]
    data: str
    ts: datetime


class OutputPage(BaseModel):
    items: list[OutputChunkRead]
    # Pass as `after_seq` to read on; unchanged when nothing new was there.
    next_after_seq: int


class StreamItem(BaseModel):
    seq: int
    event: StreamEvent
    data: dict[str, Any]


class StreamPage(BaseModel):
    items: list[StreamItem]
    status: ExecutionStatus
    next_after_seq: int


class RetryFailedRequest(BaseModel):
    """Secret parameter values again (the first run's were destroyed when it ended)."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, ParameterValue] = Field(default={}, max_length=100, repr=False)


class ExecutionAccepted(BaseModel):
    execution_id: uuid.UUID

