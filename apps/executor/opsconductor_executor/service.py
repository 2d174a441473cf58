"""Every rule of the executor's API: run requests, reads, cancel, retry-failed, the stream.

Writes that another step must follow right after commit (claim a new run, signal a cancel)
manage their own transaction here, so the follow-up sees committed rows.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts import topics
from opsconductor_contracts.events import ExecutionCancelRequested, ExecutionRequested
from opsconductor_contracts.jobspec import RunRequest, Trigger
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.security import Principal
from opsconductor_db.database import ServiceDatabase
from opsconductor_db.repository import Page
from opsconductor_db.types import utcnow
from opsconductor_executor.changes import apply_changes
from opsconductor_executor.config import Settings
from opsconductor_executor.exceptions import (
    AlreadyFinished,
    ExecutionNotFound,
    IdempotencyKeyReused,
    InvalidRunRequest,
    NotFinished,
    NothingToRetry,
    SecretKeyUnavailable,
)
from opsconductor_executor.journal import RESOURCE, Journal
from opsconductor_executor.models import (
    ACTIVE,
    ACTOR_MAX,
    FINAL,
    ID_MAX,
    NAME_MAX,
    OUTPUT,
    QUEUED,
    RETRYABLE,
    Execution,
    ExecutionRecord,
    ExecutionSecret,
    ExecutionTarget,
)
from opsconductor_executor.repository import ExecutionRepository
from opsconductor_executor.rules import counts
from opsconductor_executor.schemas import (
    SECRET_VALUE_MAX,
    Counts,
    ExecutionRead,
    OutputChunkRead,
    OutputPage,
    StreamItem,
    StreamPage,
)
from opsconductor_executor.sealing import SecretBox, SecretsUnavailable

if TYPE_CHECKING:
    from opsconductor_executor.runner import Prepared, Runner

log = logging.getLogger("opsconductor.executor.service")


class ExecutionService:
    def __init__(self, db: ServiceDatabase, publisher: EventPublisher, box: SecretBox,
                 settings: Settings) -> None:
        self.db = db
        self.publisher = publisher
        self.box = box
        self.settings = settings

    # --- run requests ----------------------------------------------------------------------------

    async def create(self, run: RunRequest, *,
                     runner: Runner | None = None) -> tuple[uuid.UUID, bool]:
        """(execution id, created now). A repeated idempotency key answers the first run.
        `runner`: this replica's runner claims the new execution in the same transaction when it
        has room, and starts it once that commits."""
        self._validate(run)
        if run.idempotency_key:
            existing = await self._by_key(run)
            if existing is not None:
                return existing, False
        if run.secret_values:
            await self._require_key()
        execution_id = uuid.uuid4()
        committed = False
        try:
            async with self.db.transaction() as session:
                prepared = await self._insert(session, run, runner, execution_id=execution_id)
            committed = True
        except IntegrityError:
            # Two requests with one key raced; the other one's run is the answer.
            existing = await self._by_key(run) if run.idempotency_key else None
            if existing is None:
                raise
            return existing, False
        finally:
            if runner is not None and not committed:
                # Whatever failed (the insert, the commit, a cancel), the slot is given back.
                runner.unclaim(execution_id)
        if runner is not None and prepared is not None:
            runner.run_claimed(prepared)
        return execution_id, True

    def _validate(self, run: RunRequest) -> None:
        errors: dict[str, str] = {}
        for name, value, longest in (("job_id", run.job_id, ID_MAX),
                                     ("job_name", run.job_name, NAME_MAX),
                                     ("requested_by", run.requested_by, ACTOR_MAX)):
            if not value or len(value) > longest:
                errors[name] = f"1 to {longest} characters"
        seen: set[str] = set()
        for index, target in enumerate(run.targets):
            if target.target_id in seen:
                errors[f"targets.{index}.target_id"] = "listed twice"
            seen.add(target.target_id)
            if not target.target_id or len(target.target_id) > ID_MAX:
                errors[f"targets.{index}.target_id"] = f"1 to {ID_MAX} characters"
            if not target.name or len(target.name) > NAME_MAX:
                errors[f"targets.{index}.name"] = f"1 to {NAME_MAX} characters"
        secret_params = {p.name for p in run.parameters if p.type == "secret"}
        for name, value in run.secret_values.items():
            if name not in secret_params:
                errors[f"secret_values.{name}"] = "not a secret parameter of this job"
            elif len(value) > SECRET_VALUE_MAX:
                errors[f"secret_values.{name}"] = f"at most {SECRET_VALUE_MAX} characters"
        for name in run.values:
            if name in secret_params:
                errors[f"values.{name}"] = "a secret parameter's value goes in secret_values"
        if errors:
            raise InvalidRunRequest("The run request is not valid", errors)

    async def _by_key(self, run: RunRequest) -> uuid.UUID | None:
        assert run.idempotency_key
        async with self.db.transaction() as session:
            existing = await ExecutionRepository(session).by_idempotency_key(run.idempotency_key)
            if existing is None:
                return None
            if existing.job_id != run.job_id:
                raise IdempotencyKeyReused()
            return existing.id

    async def _require_key(self) -> None:
        try:
            await self.box.key()
        except SecretsUnavailable:
            raise SecretKeyUnavailable() from None

    def _concurrency(self, run: RunRequest) -> int:
        asked = run.concurrency if "concurrency" in run.model_fields_set else \
            self.settings.default_concurrency
        return max(1, min(asked, self.settings.max_concurrency))

    async def _insert(self, session: AsyncSession, run: RunRequest, runner: Runner | None = None,
                      *, execution_id: uuid.UUID | None = None) -> Prepared | None:
        """Stage a new execution; `runner` claims it here when it has room (see Runner.claim_new)."""
        execution_id = execution_id or uuid.uuid4()
        snapshot = run.model_copy(update={"concurrency": self._concurrency(run)})
        spec = snapshot.model_dump_json(exclude={"secret_values", "idempotency_key"})
        execution = Execution(
            id=execution_id, job_id=run.job_id, job_name=run.job_name,
            job_version=run.job_version, status=QUEUED, trigger=run.trigger,
            requested_by=run.requested_by,
            retry_of=uuid.UUID(run.retry_of) if run.retry_of else None,
            idempotency_key=run.idempotency_key, spec=spec,
            secret_names=json.dumps(sorted(run.secret_values)),
            total_targets=len(run.targets), created_at=utcnow(), cancel_requested=False)
        # What a claim reads back from the stored spec, without reading it back.
        prepared = runner.claim_new(execution, snapshot.model_copy(
            update={"idempotency_key": None})) if runner is not None else None
        session.add(execution)
        await session.flush()
        session.add_all([ExecutionTarget(
            execution_id=execution_id, target_id=t.target_id, position=i, name=t.name,
            protocol=t.protocol, status="pending", attempts=0, output_truncated=False,
            next_step=0) for i, t in enumerate(run.targets)])
        if run.secret_values:
            session.add(ExecutionSecret(execution_id=execution_id,
                                        sealed=await self.box.seal(execution_id,
                                                                   dict(run.secret_values))))
        await session.flush()
        await self.publisher.emit(session, topics.EXECUTION_REQUESTED,
                                  ExecutionRequested(execution_id=str(execution_id),
                                                     job_id=run.job_id),
                                  actor=run.requested_by, resource_type=RESOURCE,
                                  resource_id=str(execution_id))
        if prepared is not None:
            await apply_changes(session, prepared.opening)
        log.info("execution requested", extra={"execution_id": str(execution_id),
                                               "job_id": run.job_id, "targets": len(run.targets),
                                               "claimed": prepared is not None})
        return prepared

    # --- reads -----------------------------------------------------------------------------------

    @staticmethod
    async def _get(session: AsyncSession, execution_id: uuid.UUID) -> Execution:
        execution = await ExecutionRepository(session).get(execution_id)
        if execution is None:
            raise ExecutionNotFound()
        return execution

    @staticmethod
    async def read_many(session: AsyncSession, rows: list[Execution]) -> list[ExecutionRead]:
        tallies = await ExecutionRepository(session).counts([e.id for e in rows])
        reads = []
        for execution in rows:
            tally = counts(tallies.get(execution.id, {}))
            reads.append(ExecutionRead(
                id=execution.id, job_id=execution.job_id, job_name=execution.job_name,
                job_version=execution.job_version, status=execution.status,
                trigger=execution.trigger,
                requested_by=execution.requested_by, retry_of=execution.retry_of,
                created_at=execution.created_at, started_at=execution.started_at,
                finished_at=execution.finished_at, cancel_requested=execution.cancel_requested,
                error=execution.error, counts=Counts(**tally)))
        return reads

    async def read(self, session: AsyncSession, execution_id: uuid.UUID) -> ExecutionRead:
        return (await self.read_many(session, [await self._get(session, execution_id)]))[0]

    async def search(self, session: AsyncSession, **filters: Any) -> tuple[list[ExecutionRead],
                                                                             str | None]:
        page = await ExecutionRepository(session).search(**filters)
        return await self.read_many(session, list(page.items)), page.next_cursor

    async def targets(self, session: AsyncSession, execution_id: uuid.UUID, *,
                      status: str | None, limit: int,
                      cursor: str | None) -> Page[ExecutionTarget]:
        await self._get(session, execution_id)
        return await ExecutionRepository(session).targets_page(execution_id, status=status,
                                                               limit=limit, cursor=cursor)

    async def output(self, session: AsyncSession, execution_id: uuid.UUID, *,
                     target_id: str | None, after_seq: int, limit: int) -> OutputPage:
        await self._get(session, execution_id)
        rows = await ExecutionRepository(session).records(
            execution_id, after_seq=after_seq, limit=limit, output_only=True, target_id=target_id)
        return OutputPage(items=[OutputChunkRead(seq=r.seq, target_id=r.target_id or "",
                                                 stream=r.stream or "stdout",
                                                 data=r.data, ts=r.ts) for r in rows],
                          next_after_seq=rows[-1].seq if rows else after_seq)

    async def stream(self, session: AsyncSession, execution_id: uuid.UUID, *, after_seq: int,
                     limit: int) -> StreamPage:
        execution = await self._get(session, execution_id)
        rows = await ExecutionRepository(session).records(execution_id, after_seq=after_seq,
                                                          limit=limit)
        return StreamPage(items=[_stream_item(r) for r in rows],
                          status=execution.status,
                          next_after_seq=rows[-1].seq if rows else after_seq)

    # --- cancel ----------------------------------------------------------------------------------

    async def cancel(self, principal: Principal, execution_id: uuid.UUID) -> str:
        """Returns the execution's status after the request: `canceled` when it had not started
        (nobody held it, so it ends here and now), else unchanged while its owner stops it."""
        async with self.db.transaction() as session:
            repo = ExecutionRepository(session)
            execution = await self._get(session, execution_id)
            if execution.status in FINAL:
                raise AlreadyFinished(execution.status)
            now = utcnow()
            # Conditional: of two cancels racing, one is the request (and its event).
            if execution.cancel_requested or not await repo.request_cancel(
                    execution_id, principal.subject[:128], now):
                return execution.status
            await self.publisher.emit(session, topics.EXECUTION_CANCEL_REQUESTED,
                                      ExecutionCancelRequested(execution_id=str(execution_id),
                                                               requested_by=principal.subject),
                                      actor=principal.subject, resource_type=RESOURCE,
                                      resource_id=str(execution_id))
            # Not started and held by nobody: end it here (the claim is the same conditional
            # UPDATE a runner uses, so a runner racing for it either wins or finds it ended).
            if execution.status == QUEUED and await repo.claim(
                    execution_id, self.settings.replica_id, now=now, lease_until=now):
                journal = Journal(execution_id, job_id=execution.job_id,
                                  actor=execution.requested_by,
                                  last_seq=await repo.max_seq(execution_id))
                return await journal.finish(session, owner=self.settings.replica_id)
            return execution.status

    # --- retry-failed ----------------------------------------------------------------------------

    async def retry_failed(self, principal: Principal, execution_id: uuid.UUID,
                           parameters: dict[str, Any]) -> uuid.UUID:
        async with self.db.transaction() as session:
            source = await self._get(session, execution_id)
            if source.status in ACTIVE:
                raise NotFinished()
            targets = [t for t in await ExecutionRepository(session).targets(execution_id)
                       if t.status in RETRYABLE]
            if not targets:
                raise NothingToRetry()
            spec = RunRequest.model_validate_json(source.spec)
            secret_values = self._secret_values_again(spec, json.loads(source.secret_names),
                                                      parameters)
            trigger: Trigger = "api" if principal.kind == "api_token" else "manual"
            run = spec.model_copy(update={
                "targets": [t for t in spec.targets if t.target_id in {x.target_id for x in targets}],
                "retry_of": str(execution_id), "requested_by": principal.subject,
                "trigger": trigger, "secret_values": secret_values, "idempotency_key": None})
        if secret_values:
            await self._require_key()
        execution_id = uuid.uuid4()
        async with self.db.transaction() as session:
            await self._insert(session, run, execution_id=execution_id)
        return execution_id

    @staticmethod
    def _secret_values_again(spec: RunRequest, used: list[str],
                             given: dict[str, Any]) -> dict[str, str]:
        secret = {p.name: p for p in spec.parameters if p.type == "secret"}
        errors: dict[str, str] = {}
        values: dict[str, str] = {}
        for name, value in given.items():
            if name not in secret:
                errors[f"parameters.{name[:64]}"] = "only secret parameters are given again"
            elif not isinstance(value, str) or len(value) > SECRET_VALUE_MAX:
                errors[f"parameters.{name}"] = f"a text of at most {SECRET_VALUE_MAX} characters"
            else:
                values[name] = value
        needed = {n for n, p in secret.items() if p.required} | set(used)
        for name in sorted(needed - set(given)):
            errors[f"parameters.{name}"] = "this secret parameter's value is needed again"
        if errors:
            raise InvalidRunRequest("Secret parameter values are missing or wrong", errors)
        return values


def _stream_item(record: ExecutionRecord) -> StreamItem:
    if record.event == OUTPUT:
        data: dict[str, Any] = {"target_id": record.target_id, "stream": record.stream,
                                "data": record.data,
                                "ts": record.ts.isoformat().replace("+00:00", "Z")}
    else:
        data = json.loads(record.data)
    return StreamItem(seq=record.seq, event=record.event, data=data)
