"""Every rule about jobs: definitions, ownership, versions, approvals and runs.

Extensions to API.md §Jobs (served here, documented in the app's README section):
- `GET /jobs/{id}/versions` (oldest first, paged) and `GET /jobs/{id}/versions/{n}`: every save
  makes a new version holding the full definition; the current one is the last.
- `POST /jobs/{id}/approvals` `{step_name, step_sha256}` (jobs:approve_dangerous): approves that
  exact step text; anyone holding the permission may approve, the job's owner included.
- A job read shows `dangerous_steps` (rules matched, SHA-256 of the screened text, approved or not)
  and `blocked_steps` (names of unapproved dangerous steps; the job cannot run while any).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts.clients.executor import ExecutorClient
from opsconductor_contracts.clients.targets import TargetsClient
from opsconductor_contracts.jobspec import RunRequest, render
from opsconductor_contracts.permissions import (
    JOBS_APPROVE_DANGEROUS,
    JOBS_READ,
    JOBS_RUN,
    JOBS_WRITE,
)
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.security import Principal
from opsconductor_db.repository import DEFAULT_LIMIT, Page
from opsconductor_db.types import utcnow
from opsconductor_jobs.checks import (
    RunValues,
    check_definition,
    raise_errors,
    refuse_nul,
    run_values,
)
from opsconductor_jobs.config import Settings
from opsconductor_jobs.dangerous import Policy, step_text, text_sha256
from opsconductor_jobs.events import JobEvents
from opsconductor_jobs.exceptions import (
    DangerousStepBlocked,
    EditedConcurrently,
    JobNameTaken,
    JobNotFound,
    NoTargets,
    NothingToApprove,
    NotOwner,
    RunNotAllowed,
    StepTextChanged,
    UnknownStep,
    VersionNotFound,
)
from opsconductor_jobs.models import Approval, Job, JobVersion
from opsconductor_jobs.repository import ApprovalRepository, JobRepository, VersionRepository
from opsconductor_jobs.schemas import (
    ApprovalCreate,
    DangerousStep,
    Definition,
    JobCreate,
    JobRead,
    JobUpdate,
    RunCreate,
    ValidationResult,
    VersionRead,
)

log = logging.getLogger("opsconductor.jobs")

ADMIN_ROLE = "admin"
_ALL_JOB_PERMISSIONS = (JOBS_READ, JOBS_WRITE, JOBS_RUN, JOBS_APPROVE_DANGEROUS)
_PLAIN_ARGUMENT = re.compile(r"^[\w@%+=:,./\\*~-]+$")
_DEFINITION_FIELDS = ("steps", "parameters", "targets", "concurrency", "timeout_s", "retry",
                      "run_roles")


def is_admin(principal: Principal) -> bool:
    """The admin role, or every jobs permission (an API token scoped to the admin's rights)."""
    return ADMIN_ROLE in principal.roles or all(principal.can(p) for p in _ALL_JOB_PERMISSIONS)


def argument_view(value: str) -> str:
    """How the run-time check sees a value: the executor quotes it into ONE literal argument, so
    a plain word is screened as itself (`rm -rf {{ dir }}` with `/`), while anything with spaces or
    shell symbols, which quoting keeps literal, is one opaque word (`&& reboot` runs nothing)."""
    return value if _PLAIN_ARGUMENT.match(value) else "__value__"


def scoped_idempotency_key(principal: Principal, job_id: uuid.UUID, key: str) -> str:
    """The client's key, scoped to its user and job: another user's equal key is another run."""
    digest = hashlib.sha256(f"{principal.subject}\n{job_id}\n{key}".encode()).hexdigest()
    return f"jobs-run:{digest}"


class JobsService:
    def __init__(self, session: AsyncSession, publisher: EventPublisher, policy: Policy,
                 settings: Settings, targets: TargetsClient | None = None,
                 executor: ExecutorClient | None = None) -> None:
        self.session = session
        self.events = JobEvents(session, publisher)
        self.policy = policy
        self.settings = settings
        self.targets_client = targets
        self.executor_client = executor
        self.jobs = JobRepository(session)
        self.versions = VersionRepository(session)
        self.approvals = ApprovalRepository(session)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID) -> Job:
        job = await self.jobs.get(job_id)
        if job is None:
            raise JobNotFound()
        return job

    async def search(self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> tuple[
            list[JobRead], str | None]:
        page = await self.jobs.search(limit=limit, cursor=cursor)
        approvals = await self.approvals.for_jobs([job.id for job in page.items])
        return [self.view(job, approvals.get(job.id, [])) for job in page.items], page.next_cursor

    async def read(self, job_id: uuid.UUID) -> JobRead:
        job = await self.get(job_id)
        return self.view(job, (await self.approvals.for_jobs([job.id])).get(job.id, []))

    def view(self, job: Job, approvals: Sequence[Approval]) -> JobRead:
        definition = Definition.model_validate(job.definition)
        by_text = {(a.step_name, a.step_sha256): a for a in approvals}
        dangerous: list[DangerousStep] = []
        for hit in self.policy.hits(definition.steps):
            approval = by_text.get((hit.step, hit.sha256))
            dangerous.append(DangerousStep(
                step=hit.step, field=hit.field, sha256=hit.sha256,
                rules=[rule.id for rule in hit.rules], approved=approval is not None,
                approved_by=approval.approved_by if approval else None,
                approved_at=approval.approved_at if approval else None))
        return JobRead(id=job.id, name=job.name, description=job.description,
                       owner_id=job.owner_id, version=job.version, created_at=job.created_at,
                       updated_at=job.updated_at, updated_by=job.updated_by,
                       dangerous_steps=dangerous,
                       blocked_steps=[d.step for d in dangerous if not d.approved],
                       **definition.model_dump())

    async def history(self, job_id: uuid.UUID, *, limit: int = DEFAULT_LIMIT,
                      cursor: str | None = None) -> Page[JobVersion]:
        job = await self.get(job_id)
        return await self.versions.history(job.id, limit=limit, cursor=cursor)

    async def version(self, job_id: uuid.UUID, number: int) -> VersionRead:
        job = await self.get(job_id)
        row = await self.versions.at(job.id, number)
        if row is None:
            raise VersionNotFound(number)
        return VersionRead(version=row.version, name=row.name, description=row.description,
                           changed=row.changed, created_at=row.created_at,
                           created_by=row.created_by,
                           **Definition.model_validate(row.definition).model_dump())

    # --- definitions -------------------------------------------------------------------------

    def validate(self, data: JobCreate) -> ValidationResult:
        refuse_nul(data.model_dump(mode="json"))
        findings = check_definition(data.definition(), self.policy)
        return ValidationResult(valid=not any(f.severity == "error" for f in findings),
                                findings=findings)

    async def create(self, principal: Principal, data: JobCreate) -> Job:
        refuse_nul(data.model_dump(mode="json"))
        definition = data.definition()
        raise_errors(check_definition(definition, self.policy))
        if await self.jobs.by_name(data.name) is not None:
            raise JobNameTaken(data.name)
        now = utcnow()
        stored = definition.model_dump(mode="json")
        job = Job(id=uuid.uuid4(), name=data.name, name_key=data.name.lower(),
                  description=data.description, owner_id=principal.subject, version=1,
                  definition=stored, created_at=now, updated_at=now, updated_by=principal.subject)
        try:
            await self.jobs.add(job)
        except IntegrityError:
            raise JobNameTaken(data.name) from None
        await self._record_version(job, [], principal)
        await self.events.job_changed(job, "created", principal.subject)
        return job

    async def update(self, principal: Principal, job_id: uuid.UUID, data: JobUpdate) -> Job:
        job = await self.get(job_id)
        self._require_owner(principal, job)
        refuse_nul(data.model_dump(mode="json", exclude_unset=True))
        given = data.model_dump(exclude_unset=True)
        current = Definition.model_validate(job.definition)
        merged = current.model_copy(update={k: getattr(data, k) for k in _DEFINITION_FIELDS
                                            if k in given})
        definition = Definition.model_validate(merged.model_dump())
        raise_errors(check_definition(definition, self.policy))
        stored = definition.model_dump(mode="json")
        changed = [k for k in _DEFINITION_FIELDS if stored[k] != job.definition.get(k)]
        name = data.name if data.name is not None else job.name
        description = data.description if data.description is not None else job.description
        if name != job.name:
            other = await self.jobs.by_name(name)
            if other is not None and other.id != job.id:
                raise JobNameTaken(name)
            changed.insert(0, "name")
        if description != job.description:
            changed.insert(1 if "name" in changed else 0, "description")
        if not changed:
            return job
        job.name, job.name_key, job.description = name, name.lower(), description
        job.definition = stored
        job.version += 1
        job.updated_at, job.updated_by = utcnow(), principal.subject
        try:
            await self.session.flush()
            await self._record_version(job, changed, principal)
        except IntegrityError:
            raise EditedConcurrently() from None
        await self.events.job_changed(job, "updated", principal.subject)
        return job

    async def delete(self, principal: Principal, job_id: uuid.UUID) -> None:
        job = await self.get(job_id)
        self._require_owner(principal, job)
        await self.events.job_changed(job, "deleted", principal.subject)
        await self.jobs.delete(job)

    # --- approvals ---------------------------------------------------------------------------

    async def approve(self, principal: Principal, job_id: uuid.UUID,
                      data: ApprovalCreate) -> tuple[Approval, bool]:
        """(approval, created): approving the same text again changes nothing."""
        job = await self.get(job_id)
        definition = Definition.model_validate(job.definition)
        step = next((s for s in definition.steps if s.name == data.step_name), None)
        if step is None:
            raise UnknownStep(job.version)
        _, text = step_text(step)
        sha256 = text_sha256(text)
        if sha256 != data.step_sha256:
            raise StepTextChanged(job.version)
        rules = self.policy.scan(text)
        if not rules:
            raise NothingToApprove()
        existing = await self.approvals.find(job.id, step.name, sha256)
        if existing is not None:
            return existing, False
        now = utcnow()
        approval = Approval(id=uuid.uuid4(), job_id=job.id, version=job.version,
                            step_name=step.name, step_sha256=sha256,
                            rules=[r.id for r in rules], approved_by=principal.subject,
                            approved_at=now, created_at=now)
        try:
            await self.approvals.add(approval)
        except IntegrityError:
            raise EditedConcurrently() from None
        await self.events.step_approved(approval)
        log.info("dangerous step approved", extra={"job_id": str(job.id), "step": step.name,
                                                   "rules": approval.rules})
        return approval, True

    # --- runs --------------------------------------------------------------------------------

    async def run(self, principal: Principal, job_id: uuid.UUID, data: RunCreate,
                  idempotency_key: str | None = None) -> str:
        assert self.targets_client is not None and self.executor_client is not None
        job = await self.get(job_id)
        definition = Definition.model_validate(job.definition)
        if definition.run_roles and not is_admin(principal) \
                and not set(principal.roles) & set(definition.run_roles):
            raise RunNotAllowed()
        values = run_values(definition.parameters, data.parameters)
        selector = data.targets if data.targets is not None else definition.targets
        if selector.empty:
            raise NoTargets("the job selects no targets; give target ids or tags for this run")
        resolved = await self.targets_client.resolve([str(i) for i in selector.ids],
                                                     selector.tags)
        if resolved.missing:
            raise NoTargets("no such target: " + ", ".join(resolved.missing[:20]))
        if not resolved.items:
            raise NoTargets("no targets match the selector")
        if len(resolved.items) > self.settings.max_targets_per_run:
            raise NoTargets(f"the selector matches {len(resolved.items)} targets; at most "
                            f"{self.settings.max_targets_per_run} per run")
        protocols = sorted({t.protocol for t in resolved.items})
        approvals = (await self.approvals.for_jobs([job.id])).get(job.id, [])
        self._screen(definition, approvals, protocols, values)
        request = RunRequest(
            job_id=str(job.id), job_name=job.name, job_version=job.version,
            trigger="api" if principal.kind == "api_token" else "manual",
            requested_by=principal.subject, steps=definition.steps,
            parameters=definition.parameters, values=values.values,
            secret_values=values.secret_values, targets=resolved.items,
            concurrency=definition.concurrency, timeout_s=definition.timeout_s,
            retry=definition.retry,
            idempotency_key=scoped_idempotency_key(principal, job.id, idempotency_key)
            if idempotency_key else None)
        execution_id = await self.executor_client.create_execution(request)
        log.info("run requested", extra={"job_id": str(job.id), "version": job.version,
                                         "execution_id": execution_id,
                                         "targets": len(resolved.items)})
        return execution_id

    def _screen(self, definition: Definition, approvals: Sequence[Approval],
                protocols: Sequence[str], values: RunValues) -> None:
        """The policy again, for this run's protocols: unapproved dangerous text, or parameter
        values that make a step dangerous (values are never approved), blocks the run."""
        approved = {(a.step_name, a.step_sha256) for a in approvals}
        errors: dict[str, str] = {}
        for hit in self.policy.hits(definition.steps, protocols):
            if (hit.step, hit.sha256) not in approved:
                errors[hit.field] = (f"step {hit.step!r} matches " + ", ".join(
                    r.id for r in hit.rules) + " and is not approved")
        everything = values.all()
        for index, step in enumerate(definition.steps):
            if step.kind not in ("command", "script"):
                continue
            field, text = step_text(step)
            rendered = render(text, everything, argument_view)
            if rendered == text:
                continue
            before = {r.id for r in self.policy.scan(text, protocols)}
            added = [r.id for r in self.policy.scan(rendered, protocols) if r.id not in before]
            if added:
                errors.setdefault(f"steps.{index}.{field}", (
                    f"with these parameter values step {step.name!r} matches "
                    + ", ".join(added)))
        if errors:
            raise DangerousStepBlocked(errors)

    # --- helpers -----------------------------------------------------------------------------

    def _require_owner(self, principal: Principal, job: Job) -> None:
        if principal.subject != job.owner_id and not is_admin(principal):
            raise NotOwner()

    async def _record_version(self, job: Job, changed: list[str], principal: Principal) -> None:
        self.session.add(JobVersion(id=uuid.uuid4(), job_id=job.id, version=job.version,
                                    name=job.name, description=job.description,
                                    definition=job.definition, changed=changed,
                                    created_at=job.updated_at, created_by=principal.subject))
        await self.session.flush()


