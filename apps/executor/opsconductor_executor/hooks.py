"""What the engine reports while it runs, made durable: the engine's hooks for one execution,
and the credential source it draws from for that run only."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from opsconductor_contracts import topics
from opsconductor_contracts.clients.targets import TargetCredential, TargetsClient
from opsconductor_contracts.events import ExecutionOutput, OutputChunkEvent
from opsconductor_contracts.jobspec import StepSpec
from opsconductor_db.types import utcnow
from opsconductor_executor.changes import Changes
from opsconductor_executor.engine import EngineChunk, TargetOutcome
from opsconductor_executor.journal import Journal, LeaseLost, clip
from opsconductor_executor.models import OUTPUT, RUNNING
from opsconductor_executor.recording import AfterCommit, GroupWriter, LivePublisher

log = logging.getLogger("opsconductor.executor.hooks")


class RunHooks:
    """EngineHooks of one execution. Every call returns once its write committed."""

    def __init__(self, journal: Journal, *, steps: Sequence[StepSpec], writer: GroupWriter,
                 live: LivePublisher, started: set[str] | None = None) -> None:
        self.journal = journal
        self.execution_id: uuid.UUID = journal.execution_id
        self._steps = list(steps)
        self._writer = writer
        self._live = live
        # Targets whose first start is already stored (its time is kept across attempts).
        self._started = set(started or ())
        # Set when this replica stops running it: no new writes. `lost`: another replica owns
        # it now, so writes still queued are dropped too.
        self.detached = False
        self.lost = False

    async def _write(self, changes: Changes, after_commit: AfterCommit | None = None) -> None:
        if self.detached:
            raise LeaseLost(str(self.execution_id))
        await self._writer.submit(changes, after_commit, guard=self._still_mine)

    def _still_mine(self) -> bool:
        return not self.lost

    def _target(self, target_id: str, values: dict[str, Any]) -> Changes:
        return Changes(self.execution_id, target_id, target=values)

    def _first_start(self, target_id: str, at: datetime | None) -> dict[str, Any]:
        if at is None or target_id in self._started:
            return {}
        self._started.add(target_id)
        return {"started_at": at}

    async def target_started(self, target_id: str, attempt: int) -> None:
        await self._write(self._target(target_id, {
            "status": RUNNING, "attempts": attempt, **self._first_start(target_id, utcnow())}))

    async def step_dispatched(self, target_id: str, step_index: int) -> None:
        await self._write(self._target(target_id, {"inflight_step": step_index}))

    async def step_finished(self, target_id: str, step_index: int, exit_code: int | None) -> None:
        step = self._steps[step_index] if 0 <= step_index < len(self._steps) else None
        went_on = exit_code == 0 or (step is not None and step.continue_on_error)
        await self._write(self._target(target_id, {
            "inflight_step": None, "last_step": step_index, "exit_code": exit_code,
            "next_step": step_index + 1 if went_on else step_index}))

    async def output(self, chunks: list[EngineChunk]) -> None:
        if not chunks:
            return
        first = self.journal.allocate(len(chunks))
        rows = [{"execution_id": self.execution_id, "seq": first + i, "event": OUTPUT,
                 "target_id": c.target_id, "stream": c.stream, "data": c.data, "ts": c.ts}
                for i, c in enumerate(chunks)]
        event = self.journal.event(topics.EXECUTION_OUTPUT, ExecutionOutput(
            execution_id=str(self.execution_id), chunks=[
                OutputChunkEvent(seq=first + i, target_id=c.target_id, stream=c.stream,
                                 data=c.data, ts=c.ts) for i, c in enumerate(chunks)]))
        await self._write(Changes(self.execution_id, records=rows),
                          lambda: self._live.offer(topics.EXECUTION_OUTPUT, event))

    async def target_finished(self, target_id: str, outcome: TargetOutcome) -> None:
        values: dict[str, Any] = {
            "status": outcome.status, "exit_code": outcome.exit_code, "attempts": outcome.attempts,
            "finished_at": outcome.finished_at, "error": clip(outcome.error),
            "output_truncated": outcome.output_truncated, "inflight_step": None,
            **self._first_start(target_id, outcome.started_at)}
        announce = self.journal.target_finished(target_id, outcome.status,
                                                exit_code=outcome.exit_code,
                                                attempts=outcome.attempts, error=outcome.error)
        await self._write(self._target(target_id, values).merge(announce))


class RunCredentials:
    """CredentialSource for one run: each target's credential fetched from `targets` once, kept
    in memory for this run only."""

    def __init__(self, targets: TargetsClient) -> None:
        self._targets = targets
        self._cache: dict[str, TargetCredential | None] = {}

    async def get(self, target_id: str) -> TargetCredential | None:
        if target_id not in self._cache:
            self._cache[target_id] = await self._targets.get_credential(target_id)
        return self._cache[target_id]

    def forget(self) -> None:
        self._cache.clear()
