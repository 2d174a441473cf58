"""HTTP only: parse, authorise at the door, call the service, shape the answer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response, status

from opsconductor_contracts.jobspec import ExecutionCreated, RunRequest
from opsconductor_contracts.permissions import EXECUTIONS_CANCEL, EXECUTIONS_READ, JOBS_RUN
from opsconductor_core.problems import Forbidden
from opsconductor_core.security import CurrentPrincipal, Principal
from opsconductor_db.deps import Session
from opsconductor_db.repository import DEFAULT_LIMIT, MAX_LIMIT
from opsconductor_executor.config import RUN_REQUEST_CALLERS, STREAM_READER_CALLERS
from opsconductor_executor.exceptions import CallerNotAllowed
from opsconductor_executor.runner import Runner
from opsconductor_executor.schemas import (
    ExecutionAccepted,
    ExecutionPage,
    ExecutionRead,
    ExecutionStatus,
    OutputPage,
    RetryFailedRequest,
    StreamPage,
    TargetResultPage,
    TargetResultRead,
    TargetStatus,
)
from opsconductor_executor.service import ExecutionService

log = logging.getLogger("opsconductor.executor.api")

router = APIRouter(tags=["executions"])
internal_router = APIRouter(tags=["internal"], include_in_schema=False)
CALLER_HEADER = "dapr-caller-app-id"
OUTPUT_LIMIT_MAX = 5000


def _require(*permissions: str) -> Callable[..., Awaitable[Principal]]:
    async def _check(principal: CurrentPrincipal) -> Principal:
        missing = [p for p in permissions if not principal.can(p)]
        if missing:
            raise Forbidden(f"Missing permission: {', '.join(missing)}")
        return principal

    return _check


def _caller(allowed: frozenset[str]) -> Callable[[Request], Awaitable[str]]:
    """The calling app as the runtime reports it (Dapr sets the header; apps cannot forge it
    through the gateway, which never forwards /internal)."""
    async def _check(request: Request) -> str:
        caller = request.headers.get(CALLER_HEADER, "")
        if caller not in allowed:
            log.warning("internal call refused", extra={"path": request.url.path,
                                                        "caller": caller[:64] or None})
            raise CallerNotAllowed(" or ".join(sorted(allowed)))
        return caller

    return _check


Reader = Annotated[Principal, Depends(_require(EXECUTIONS_READ))]
Canceller = Annotated[Principal, Depends(_require(EXECUTIONS_CANCEL))]
MayRun = Annotated[Principal, Depends(_require(JOBS_RUN))]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]
AfterSeq = Annotated[int, Query(ge=0)]
OutputLimit = Annotated[int, Query(ge=1, le=OUTPUT_LIMIT_MAX)]


async def _service(request: Request) -> ExecutionService:
    state = request.app.state
    return ExecutionService(state.db, state.publisher, state.box, state.settings)


Executions = Annotated[ExecutionService, Depends(_service)]


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


@router.get("/executions", response_model=ExecutionPage)
async def list_executions(_: Reader, executions: Executions, session: Session,
                          job_id: Annotated[str | None, Query(max_length=64)] = None,
                          status: ExecutionStatus | None = None, limit: Limit = DEFAULT_LIMIT,
                          cursor: Cursor = None) -> ExecutionPage:
    items, next_cursor = await executions.search(session, job_id=job_id, status=status,
                                                 limit=limit, cursor=cursor)
    return ExecutionPage(items=items, next_cursor=next_cursor)


@router.get("/executions/{execution_id}", response_model=ExecutionRead)
async def read_execution(execution_id: uuid.UUID, _: Reader, executions: Executions,
                         session: Session) -> ExecutionRead:
    return await executions.read(session, execution_id)


@router.get("/executions/{execution_id}/targets", response_model=TargetResultPage)
async def read_targets(execution_id: uuid.UUID, _: Reader, executions: Executions,
                       session: Session, status: TargetStatus | None = None,
                       limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> TargetResultPage:
    page = await executions.targets(session, execution_id, status=status, limit=limit,
                                    cursor=cursor)
    return TargetResultPage(items=[TargetResultRead.model_validate(t) for t in page.items],
                            next_cursor=page.next_cursor)


@router.get("/executions/{execution_id}/output", response_model=OutputPage)
async def read_output(execution_id: uuid.UUID, _: Reader, executions: Executions,
                      session: Session,
                      target_id: Annotated[str | None, Query(max_length=64)] = None,
                      after_seq: AfterSeq = 0, limit: OutputLimit = 1000) -> OutputPage:
    return await executions.output(session, execution_id, target_id=target_id,
                                   after_seq=after_seq, limit=limit)


@router.get("/executions/{execution_id}/stream", response_model=StreamPage)
async def read_stream_page(execution_id: uuid.UUID, _: Reader, executions: Executions,
                           session: Session, after_seq: AfterSeq = 0,
                           limit: OutputLimit = 1000) -> StreamPage:
    """Everything the live stream shows, in seq order, for a reader: the gateway's first read
    of an events stream is the caller's own, so it is the access check too."""
    return await executions.stream(session, execution_id, after_seq=after_seq, limit=limit)


@router.post("/executions/{execution_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel_execution(execution_id: uuid.UUID, principal: Canceller,
                           executions: Executions, request: Request) -> dict[str, str]:
    now = await executions.cancel(principal, execution_id)
    # Fast path: when this replica runs it, the engine hears it now, not at the owner's next
    # heartbeat. Only once the request is stored: a run stopped before that could reach its
    # final state first, and end `canceled` with no cancel request on record. A request refused
    # above (404, 409) signals nothing.
    _runner(request).cancel_local(execution_id)
    return {"execution_id": str(execution_id), "status": now}


@router.post("/executions/{execution_id}/retry-failed", response_model=ExecutionAccepted,
             status_code=status.HTTP_202_ACCEPTED)
async def retry_failed(execution_id: uuid.UUID, principal: MayRun, executions: Executions,
                       request: Request,
                       body: Annotated[RetryFailedRequest | None, Body()] = None,
                       ) -> ExecutionAccepted:
    new_id = await executions.retry_failed(principal, execution_id,
                                           dict(body.parameters) if body else {})
    _runner(request).kick(new_id)
    return ExecutionAccepted(execution_id=new_id)


# --- service to service (the gateway never forwards /internal) -------------------------------

@internal_router.post("/internal/executions", response_model=ExecutionCreated,
                      status_code=status.HTTP_201_CREATED)
async def create_execution(run: RunRequest, executions: Executions, request: Request,
                           response: Response,
                           _: Annotated[str, Depends(_caller(RUN_REQUEST_CALLERS))]
                           ) -> ExecutionCreated:
    runner = _runner(request)
    # Fast path: this replica claims it as it creates it; the event finds it taken.
    execution_id, created = await executions.create(run, runner=runner)
    if created and not runner.holds(execution_id):
        runner.kick(execution_id)
    response.headers["Location"] = f"/executions/{execution_id}"
    return ExecutionCreated(execution_id=str(execution_id))


@internal_router.get("/internal/executions/{execution_id}/stream", response_model=StreamPage)
async def read_stream(execution_id: uuid.UUID, executions: Executions, session: Session,
                      _: Annotated[str, Depends(_caller(STREAM_READER_CALLERS))],
                      after_seq: AfterSeq = 0, limit: OutputLimit = 1000) -> StreamPage:
    """Everything the live stream shows, in seq order, from storage (resume and catch-up)."""
    return await executions.stream(session, execution_id, after_seq=after_seq, limit=limit)
