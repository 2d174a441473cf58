"""What the jobs service announces, through its outbox (in the caller's transaction).

The jobs service subscribes to no topic. Payloads never carry a step's text or a parameter value:
a job event names the job and its version, an approval the SHA-256 of the approved text.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts import topics
from opsconductor_contracts.events import DangerousStepApproved, JobChanged
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_jobs.models import Approval, Job

_TOPICS = {"created": topics.JOB_CREATED, "updated": topics.JOB_UPDATED,
           "deleted": topics.JOB_DELETED}


class JobEvents:
    def __init__(self, session: AsyncSession, publisher: EventPublisher) -> None:
        self.session = session
        self.publisher = publisher

    async def job_changed(self, job: Job, change: str, actor: str) -> None:
        await self.publisher.emit(self.session, _TOPICS[change], JobChanged(
            job_id=str(job.id), name=job.name, version=job.version, change=change),
            actor=actor, resource_type="job", resource_id=str(job.id))

    async def step_approved(self, approval: Approval) -> None:
        await self.publisher.emit(self.session, topics.DANGEROUS_STEP_APPROVED,
                                  DangerousStepApproved(
                                      job_id=str(approval.job_id), version=approval.version,
                                      step_name=approval.step_name,
                                      step_sha256=approval.step_sha256, rules=approval.rules,
                                      approved_by=approval.approved_by),
                                  actor=approval.approved_by, resource_type="job",
                                  resource_id=str(approval.job_id))
