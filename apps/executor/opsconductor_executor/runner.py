"""This replica's executions: claim one, run it through the engine, give it its final state.

A claim is one conditional UPDATE (see ExecutionRepository.claim), so of all replicas that try,
exactly one runs an execution. Claiming an execution someone else started (its lease expired)
continues it: targets that never started run, a target whose step may have run is marked
interrupted unless that step is idempotent (rules.plan_target).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from opsconductor_contracts.clients.targets import TargetsClient
from opsconductor_contracts.jobspec import RunRequest
from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_executor.changes import Changes, apply_changes
from opsconductor_executor.config import Settings
from opsconductor_executor.engine import Engine, TargetPlan
from opsconductor_executor.hooks import RunCredentials, RunHooks
from opsconductor_executor.journal import Journal, LeaseLost
from opsconductor_executor.models import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    TIMED_OUT,
    Execution,
    has_secrets,
)
from opsconductor_executor.recording import GroupWriter, LivePublisher
from opsconductor_executor.repository import ExecutionRepository
from opsconductor_executor.rules import FRESH, Resume, Settle, TargetState, plan_target
from opsconductor_executor.sealing import SecretBox, SecretsUnavailable
from opsconductor_runtime.interface import Runtime

log = logging.getLogger("opsconductor.executor.runner")


@dataclass
class Prepared:
    run: RunRequest
    plans: list[TargetPlan]
    journal: Journal
    started: set[str]
    # What the transaction that claims it must also write (a claim at creation).
    opening: list[Changes] = field(default_factory=list)


@dataclass(eq=False)
class Active:
    hooks: RunHooks
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_seen: bool = False


class Runner:
    def __init__(self, *, db: ServiceDatabase, runtime: Runtime, settings: Settings,
                 box: SecretBox,
                 engine_factory: Callable[[], Engine]) -> None:
        self.db = db
        self.settings = settings
        self.replica_id = settings.replica_id
        self.box = box
        self.targets = TargetsClient(runtime)
        self.writer = GroupWriter(db)
        self.live = LivePublisher(runtime, capacity=settings.live_output_queue)
        # Built at start (a test may put its own in before).
        self.engine: Any = None
        self._engine_factory = engine_factory
        self._active: dict[uuid.UUID, Active] = {}
        self._claiming: set[uuid.UUID] = set()
        self._kicks: set[asyncio.Task[Any]] = set()
        self.accepting = False

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.engine is None:
            self.engine = self._engine_factory()
        self.writer.start()
        self.live.start()
        self.accepting = True

    async def stop(self, *, release: bool = True) -> None:
        """Stop taking work and let go of running executions. `release`: another replica may
        take them over at once (clean shutdown); otherwise they wait for their leases to expire
        (what a killed process leaves behind)."""
        self.accepting = False
        if self._kicks:
            # Claims in progress finish (a claim cut short mid-query strands its connection);
            # what they claimed is let go of below with the rest.
            await asyncio.wait(set(self._kicks), timeout=10.0)
        held = list(self._active)
        await self.abandon_all()
        await self.live.stop()
        # What the runs reported before they stopped is stored before anyone may take over.
        await self.writer.stop()
        if release and held:
            now = utcnow()
            with contextlib.suppress(Exception):
                async with self.db.transaction() as session:
                    for execution_id in held:
                        await ExecutionRepository(session).release(execution_id, self.replica_id, now)
        close = getattr(self.engine, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def abandon_all(self) -> None:
        tasks = [a.task for a in self._active.values() if a.task is not None]
        for execution_id in list(self._active):
            self.detach(execution_id)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- what the heartbeat and the API ask -------------------------------------------------------

    @property
    def running_ids(self) -> list[uuid.UUID]:
        return list(self._active)

    def holds(self, execution_id: uuid.UUID) -> bool:
        """Running here, or being claimed here right now."""
        return execution_id in self._active or execution_id in self._claiming

    @property
    def has_room(self) -> bool:
        return len(self._active) + len(self._claiming) < self.settings.max_running_executions

    def detach(self, execution_id: uuid.UUID, *, lost: bool = False) -> None:
        """Stop at once and report nothing more (the replica is going away). `lost`: another
        replica owns it now, so what is still queued for it is dropped too."""
        active = self._active.get(execution_id)
        if active is None:
            return
        active.hooks.detached = True
        active.hooks.lost = active.hooks.lost or lost
        if active.task is not None:
            active.task.cancel()

    def cancel_local(self, execution_id: uuid.UUID) -> bool:
        """Signal the engine of an execution this replica runs; False when it runs elsewhere."""
        active = self._active.get(execution_id)
        if active is None:
            return False
        if not active.cancel_seen:
            active.cancel_seen = True
            active.cancel.set()
            if not active.hooks.detached:
                done = self.writer.submit(active.hooks.journal.status({"status": "canceling"}))
                done.add_done_callback(_log_failure)
        return True

    def kick(self, execution_id: uuid.UUID) -> None:
        """Try to claim in the background (the fast path right after a run request commits)."""
        if not self.accepting:
            return
        task = asyncio.create_task(self.claim_and_run(execution_id))
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    # --- claim at creation ------------------------------------------------------------------------

    def claim_new(self, execution: Execution, run: RunRequest) -> Prepared | None:
        """Claim an execution in the transaction that creates it: the request's own replica runs
        it without a second transaction (a run's first output waited on that claim). `run` is
        the stored snapshot plus the secret values. None when this replica takes no more work;
        the execution is then created queued and the event or a sweep finds it. After the
        commit, `run_claimed`; if the transaction fails, `unclaim`."""
        if not self.accepting or not self.has_room:
            return None
        now = utcnow()
        execution.status = RUNNING
        execution.owner = self.replica_id
        execution.lease_until = now + timedelta(seconds=self.settings.lease_s)
        execution.started_at = now
        if run.timeout_s:
            execution.deadline_at = now + timedelta(seconds=run.timeout_s)
        journal = Journal(execution.id, job_id=execution.job_id, actor=execution.requested_by,
                          last_seq=0)
        plans = [TargetPlan(target_id=t.target_id, name=t.name, protocol=t.protocol,
                            first_step=FRESH.first_step, attempts_done=FRESH.attempts_done)
                 for t in run.targets]
        self._claiming.add(execution.id)
        return Prepared(run=run, plans=plans, journal=journal, started=set(),
                        opening=[journal.started(execution.total_targets)])

    def run_claimed(self, prepared: Prepared) -> None:
        execution_id = prepared.journal.execution_id
        self._claiming.discard(execution_id)
        self._start(prepared)

    def unclaim(self, execution_id: uuid.UUID) -> None:
        self._claiming.discard(execution_id)

    # --- claim and run ---------------------------------------------------------------------------

    async def claim_and_run(self, execution_id: uuid.UUID, *, take_own: bool = False) -> bool:
        if (not self.accepting or execution_id in self._active
                or execution_id in self._claiming or not self.has_room):
            return False
        self._claiming.add(execution_id)
        try:
            prepared = await self._claim(execution_id, take_own=take_own)
            if prepared is None:
                return False
        except Exception:
            log.exception("claim failed", extra={"execution_id": str(execution_id)})
            return False
        finally:
            self._claiming.discard(execution_id)
        self._start(prepared)
        return True

    def _start(self, prepared: Prepared) -> None:
        execution_id = prepared.journal.execution_id
        hooks = RunHooks(prepared.journal, steps=prepared.run.steps, writer=self.writer,
                         live=self.live, started=prepared.started)
        active = Active(hooks)
        self._active[execution_id] = active
        active.task = asyncio.create_task(self._run(active, prepared),
                                          name=f"execution:{execution_id}")

    async def _claim(self, execution_id: uuid.UUID, *, take_own: bool) -> Prepared | None:
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.lease_s)
        async with self.db.transaction() as session:
            repo = ExecutionRepository(session)
            if not await repo.claim(execution_id, self.replica_id, now=now,
                                    lease_until=lease_until, take_own=take_own):
                return None
            execution = await repo.get(execution_id)
            assert execution is not None
            spec = RunRequest.model_validate_json(execution.spec)
            # Nothing is recorded before the first claim (it records `started`), so a queued
            # execution's stream is empty: one query fewer on every run's way to its first output.
            last_seq = 0 if execution.status == QUEUED else await repo.max_seq(execution_id)
            journal = Journal(execution_id, job_id=execution.job_id, actor=execution.requested_by,
                              last_seq=last_seq)
            taken_over = execution.status == RUNNING
            if execution.status == QUEUED:
                execution.status = RUNNING
                execution.started_at = now
                if spec.timeout_s:
                    execution.deadline_at = now + timedelta(seconds=spec.timeout_s)
                await session.flush()
                await apply_changes(session, [journal.started(execution.total_targets)])
            values, problem = await self._secret_values(repo, execution)
            plans, settled, started = await self._plan(session, journal, execution, spec, problem)
            if taken_over:
                log.info("execution taken over", extra={"execution_id": str(execution_id),
                                                        "resumed": len(plans), "settled": settled})
                await apply_changes(session, [journal.status({
                    "status": RUNNING, "taken_over_by": self.replica_id,
                    "resumed_targets": len(plans), "settled_targets": settled})])
            if not plans:
                await session.flush()
                await journal.finish(session, owner=self.replica_id, reason=problem)
                return None
        timeout_s = spec.timeout_s
        if execution.deadline_at is not None:
            timeout_s = max(1, math.ceil((execution.deadline_at - utcnow()).total_seconds()))
        run = spec.model_copy(update={"secret_values": values, "timeout_s": timeout_s})
        return Prepared(run=run, plans=plans, journal=journal, started=started)

    async def _secret_values(self, repo: ExecutionRepository,
                             execution: Execution) -> tuple[dict[str, str], str | None]:
        # Values are sealed only for a run given secret values, and their names are kept.
        sealed = await repo.sealed_secrets(execution.id) if has_secrets(execution) else None
        if sealed is None:
            return {}, None
        try:
            return await self.box.open(execution.id, sealed), None
        except SecretsUnavailable:
            log.error("secret values of an execution do not open",
                      extra={"execution_id": str(execution.id)})
            return {}, "The secret parameter values of this run are not available"

    async def _plan(self, session: Any, journal: Journal, execution: Execution, spec: RunRequest,
                    problem: str | None) -> tuple[list[TargetPlan], int, set[str]]:
        """(what to run, how many targets were ended here, targets whose start is stored)"""
        repo = ExecutionRepository(session)
        now = utcnow()
        expired = execution.deadline_at is not None and now >= execution.deadline_at
        plans: list[TargetPlan] = []
        settled: list[Changes] = []
        started: set[str] = set()
        for target in await repo.targets(execution.id):
            if target.started_at is not None:
                started.add(target.target_id)
            state = TargetState(target.target_id, target.status, target.attempts,
                                target.inflight_step, target.next_step, target.last_step,
                                target.exit_code)
            decision = plan_target(state, spec.steps, spec.retry.count + 1)
            if decision is None:
                continue
            if isinstance(decision, Resume):
                if execution.cancel_requested:
                    decision = Settle(CANCELED, "Canceled before it started")
                elif problem is not None:
                    decision = Settle(FAILED, problem)
                elif expired:
                    decision = Settle(TIMED_OUT, "The job's timeout ran out")
            if isinstance(decision, Settle):
                settled.append(journal.settle(target.target_id, decision.status,
                                              error=decision.error, exit_code=decision.exit_code,
                                              attempts=target.attempts, now=now))
                continue
            plans.append(TargetPlan(target_id=target.target_id, name=target.name,
                                    protocol=target.protocol,  # type: ignore[arg-type]
                                    first_step=decision.first_step,
                                    attempts_done=decision.attempts_done))
        await apply_changes(session, settled)
        return plans, len(settled), started

    async def _run(self, active: Active, prepared: Prepared) -> None:
        execution_id = prepared.journal.execution_id
        credentials = RunCredentials(self.targets)
        reason: str | None = None
        try:
            try:
                await self.engine.run(prepared.run, prepared.plans, active.hooks, credentials,
                                      active.cancel)
            except LeaseLost:
                log.warning("execution lost to another replica", extra={
                    "execution_id": str(execution_id)})
                return
            except Exception as exc:
                if active.hooks.detached:
                    return
                log.exception("engine failed", extra={"execution_id": str(execution_id)})
                reason = f"Executor error ({type(exc).__name__}); the run was stopped"
            finally:
                credentials.forget()
            if active.hooks.detached:
                return
            journal = prepared.journal
            try:
                await self.writer.submit(lambda session: _finish(
                    journal, session, self.replica_id, reason, canceled=active.cancel_seen))
            except LeaseLost:
                log.warning("execution lost before its end was recorded",
                            extra={"execution_id": str(execution_id)})
        finally:
            self._active.pop(execution_id, None)


async def _finish(journal: Journal, session: Any, owner: str, reason: str | None, *,
                  canceled: bool) -> None:
    status = await journal.finish(session, owner=owner, reason=reason, canceled=canceled)
    log.info("execution finished", extra={"execution_id": str(journal.execution_id),
                                          "status": status})


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("stream record not written", extra={
            "error": type(future.exception()).__name__})
