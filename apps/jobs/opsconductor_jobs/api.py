"""HTTP only: parse, authorise at the door, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status

from opsconductor_contracts.clients.executor import ExecutorClient
from opsconductor_contracts.clients.targets import TargetsClient
from opsconductor_contracts.permissions import (
    JOBS_APPROVE_DANGEROUS,
    JOBS_READ,
    JOBS_RUN,
    JOBS_WRITE,
)
from opsconductor_core.problems import InvalidInput
from opsconductor_core.security import RequirePermission
from opsconductor_db.deps import Session
from opsconductor_db.repository import DEFAULT_LIMIT, MAX_LIMIT
from opsconductor_jobs.schemas import (
    ApprovalCreate,
    ApprovalRead,
    JobCreate,
    JobPage,
    JobRead,
    JobUpdate,
    RunAccepted,
    RunCreate,
    ValidationResult,
    VersionPage,
    VersionRead,
    VersionSummary,
)
from opsconductor_jobs.service import JobsService

router = APIRouter(tags=["jobs"])

Reader = RequirePermission(JOBS_READ)
Writer = RequirePermission(JOBS_WRITE)
Runner = RequirePermission(JOBS_RUN)
Approver = RequirePermission(JOBS_APPROVE_DANGEROUS)
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]
IDEMPOTENCY_KEY_MAX = 200


async def _service(request: Request, session: Session) -> JobsService:
    state = request.app.state
    return JobsService(session, state.publisher, state.policy, state.settings,
                       targets=TargetsClient(state.runtime), executor=ExecutorClient(state.runtime))


Jobs = Annotated[JobsService, Depends(_service)]


@router.get("/jobs", response_model=JobPage)
async def list_jobs(_: Reader, jobs: Jobs, limit: Limit = DEFAULT_LIMIT,
                    cursor: Cursor = None) -> JobPage:
    items, next_cursor = await jobs.search(limit=limit, cursor=cursor)
    return JobPage(items=items, next_cursor=next_cursor)


@router.post("/jobs", response_model=JobRead, status_code=status.HTTP_201_CREATED)
async def create_job(body: JobCreate, principal: Writer, jobs: Jobs,
                     response: Response) -> JobRead:
    """Saved even when a step matches a dangerous-command rule: it is then listed in
    `blocked_steps` and the job cannot run until someone approves that step's text."""
    job = await jobs.create(principal, body)
    response.headers["Location"] = f"/jobs/{job.id}"
    return jobs.view(job, [])


@router.post("/jobs/validate", response_model=ValidationResult)
async def validate_job(body: JobCreate, _: Reader, jobs: Jobs) -> ValidationResult:
    """Findings for a definition without saving it: errors (it could not be saved), dangers
    (dangerous-command rules) and warnings. A body that does not fit the schema is 422."""
    return jobs.validate(body)


@router.get("/jobs/{job_id}", response_model=JobRead)
async def read_job(job_id: uuid.UUID, _: Reader, jobs: Jobs) -> JobRead:
    return await jobs.read(job_id)


@router.patch("/jobs/{job_id}", response_model=JobRead)
async def update_job(job_id: uuid.UUID, body: JobUpdate, principal: Writer,
                     jobs: Jobs) -> JobRead:
    """The owner or an admin; a change makes a new version."""
    await jobs.update(principal, job_id, body)
    return await jobs.read(job_id)


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_job(job_id: uuid.UUID, principal: Writer, jobs: Jobs) -> Response:
    await jobs.delete(principal, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/versions", response_model=VersionPage)
async def list_versions(job_id: uuid.UUID, _: Reader, jobs: Jobs, limit: Limit = DEFAULT_LIMIT,
                        cursor: Cursor = None) -> VersionPage:
    page = await jobs.history(job_id, limit=limit, cursor=cursor)
    return VersionPage(items=[VersionSummary(version=v.version, name=v.name, changed=v.changed,
                                             created_at=v.created_at, created_by=v.created_by)
                              for v in page.items], next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}/versions/{version}", response_model=VersionRead)
async def read_version(job_id: uuid.UUID, version: Annotated[int, Path(ge=1, le=2**31 - 1)],
                       _: Reader, jobs: Jobs) -> VersionRead:
    return await jobs.version(job_id, version)


@router.post("/jobs/{job_id}/approvals", response_model=ApprovalRead,
             status_code=status.HTTP_201_CREATED)
async def approve_step(job_id: uuid.UUID, body: ApprovalCreate, principal: Approver,
                       jobs: Jobs, response: Response) -> ApprovalRead:
    """Approve one dangerous step's exact text (its SHA-256 as shown in `dangerous_steps`).
    201 when recorded, 200 when that text was already approved."""
    approval, created = await jobs.approve(principal, job_id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return ApprovalRead.model_validate(approval)


@router.post("/jobs/{job_id}/run", response_model=RunAccepted,
             status_code=status.HTTP_202_ACCEPTED)
async def run_job(job_id: uuid.UUID, principal: Runner, jobs: Jobs, body: RunCreate | None = None,
                  idempotency_key: Annotated[str | None, Header(max_length=512)] = None,
                  ) -> RunAccepted:
    """Starts an execution; follow it at /executions/{execution_id}. A repeated
    `Idempotency-Key` (same user, same job) answers with the same execution."""
    if idempotency_key is not None and (
            not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_MAX
            or not idempotency_key.isprintable() or not idempotency_key.isascii()):
        raise InvalidInput("Invalid Idempotency-Key", errors={
            "Idempotency-Key": f"1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"})
    execution_id = await jobs.run(principal, job_id, body or RunCreate(), idempotency_key)
    return RunAccepted(execution_id=execution_id)
