"""An execution's journal: its numbered records (seq 1, 2, 3...) and the events that announce them.

The replica that owns an execution numbers everything it records, output and status changes
alike, so the stored stream is one ordered sequence the gateway can replay from any point.
A number is taken when the write is queued, so records commit in the order they were numbered.
Status changes also go out through the outbox, in the transaction that stores them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts import topics
from opsconductor_contracts.envelope import new_event
from opsconductor_contracts.events import (
    ExecutionFinished,
    ExecutionStarted,
    ExecutionTargetFinished,
)
from opsconductor_db.types import utcnow
from opsconductor_executor.changes import Changes, apply_changes
from opsconductor_executor.config import APP_ID
from opsconductor_executor.models import (
    CANCELED,
    ERROR_MAX,
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    STARTED,
    STATUS,
    TARGET_FINISHED,
    TIMED_OUT,
    Execution,
    has_secrets,
)
from opsconductor_executor.repository import ExecutionRepository
from opsconductor_executor.rules import TARGET_FINAL, counts, final_status

RESOURCE = "execution"


class LeaseLost(Exception):
    """Another replica owns this execution now; this one must stop writing for it."""


def clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX - 1] + "…"


class Journal:
    def __init__(self, execution_id: uuid.UUID, *, job_id: str, actor: str | None,
                 last_seq: int) -> None:
        self.execution_id = execution_id
        self.job_id = job_id
        self.actor = actor
        self._last = last_seq

    def allocate(self, count: int = 1) -> int:
        """Reserve `count` consecutive numbers; returns the first."""
        first = self._last + 1
        self._last += count
        return first

    def event(self, topic: str, payload: BaseModel) -> dict[str, Any]:
        return new_event(topic, payload, source=APP_ID, actor=self.actor, resource_type=RESOURCE,
                         resource_id=str(self.execution_id))

    def _entry(self, event: str, payload: Callable[[int], BaseModel] | dict[str, Any], *,
               topic: str | None, target_id: str | None = None) -> Changes:
        """One numbered record; `payload` is built with its seq (or is plain data)."""
        seq = self.allocate()
        model = payload(seq) if callable(payload) else None
        data = model.model_dump(mode="json") if model is not None else payload
        changes = Changes(self.execution_id, records=[{
            "execution_id": self.execution_id, "seq": seq, "event": event,
            "target_id": target_id, "stream": None, "data": json.dumps(data), "ts": utcnow()}])
        if topic is not None and model is not None:
            changes.events.append((topic, self.event(topic, model)))
        return changes

    def started(self, total_targets: int) -> Changes:
        return self._entry(STARTED, lambda seq: ExecutionStarted(
            execution_id=str(self.execution_id), job_id=self.job_id, seq=seq,
            total_targets=total_targets), topic=topics.EXECUTION_STARTED)

    def status(self, data: dict[str, Any]) -> Changes:
        """A change the stream shows that has no event of its own (cancel seen, taken over)."""
        return self._entry(STATUS, data, topic=None)

    def target_finished(self, target_id: str, status: str, *, exit_code: int | None,
                        attempts: int, error: str | None) -> Changes:
        return self._entry(TARGET_FINISHED, lambda seq: ExecutionTargetFinished(
            execution_id=str(self.execution_id), seq=seq, target_id=target_id, status=status,
            exit_code=exit_code, attempts=attempts, error=clip(error)),
            topic=topics.EXECUTION_TARGET_FINISHED, target_id=target_id)

    def settle(self, target_id: str, status: str, *, error: str | None,
               exit_code: int | None = None, attempts: int = 0,
               now: datetime | None = None) -> Changes:
        """End one target without running it (canceled, interrupted, timed out...)."""
        update = Changes(self.execution_id, target_id, target={
            "status": status, "error": clip(error), "exit_code": exit_code,
            "finished_at": now or utcnow(), "inflight_step": None})
        return update.merge(self.target_finished(target_id, status, exit_code=exit_code,
                                                 attempts=attempts, error=error))

    async def finish(self, session: AsyncSession, *, owner: str, reason: str | None = None,
                     canceled: bool = False) -> str:
        """Give the execution its final state (targets still open are settled first), announce
        it, and destroy its secret values. Raises LeaseLost if `owner` no longer holds it.
        `canceled`: the owner signalled a cancel (the stored request may be a moment behind)."""
        repo = ExecutionRepository(session)
        execution = await session.get(Execution, self.execution_id, populate_existing=True)
        if execution is None or execution.owner != owner:
            raise LeaseLost(str(self.execution_id))
        cancel_requested = execution.cancel_requested or canceled
        now = utcnow()
        statuses: list[str] = []
        settled: list[Changes] = []
        for target in await repo.targets(self.execution_id):
            if target.status in TARGET_FINAL:
                statuses.append(target.status)
                continue
            if cancel_requested:
                status, error = CANCELED, "Canceled before it finished"
            elif target.inflight_step is not None or target.status == RUNNING:
                status, error = INTERRUPTED, reason or "The run ended without an outcome for it"
            else:
                status, error = FAILED, reason or "The run ended before this target started"
            settled.append(self.settle(target.target_id, status, error=error,
                                       attempts=target.attempts, now=now))
            statuses.append(status)
        await apply_changes(session, settled)
        job_timed_out = (execution.deadline_at is not None and now >= execution.deadline_at
                         and TIMED_OUT in statuses)
        status = final_status(statuses, cancel_requested=cancel_requested,
                              job_timed_out=job_timed_out)
        tally = counts(statuses)
        changed = await repo.update_execution(self.execution_id, {
            "status": status, "finished_at": now, "lease_until": None,
            "error": clip(reason) if reason else execution.error}, owner=owner)
        if not changed:
            raise LeaseLost(str(self.execution_id))
        await apply_changes(session, [self._entry(FINISHED, lambda seq: ExecutionFinished(
            execution_id=str(self.execution_id), job_id=self.job_id, seq=seq, status=status,
            counts=tally), topic=topics.EXECUTION_FINISHED)])
        if has_secrets(execution):
            await repo.drop_secrets(self.execution_id)
        return status
