"""SQL of the jobs service. Flushes, never commits."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select

from opsconductor_db.repository import DEFAULT_LIMIT, Page, Repository
from opsconductor_jobs.models import Approval, Job, JobVersion


class JobRepository(Repository[Job]):
    model = Job

    async def by_name(self, name: str) -> Job | None:
        return await self.session.scalar(select(Job).where(Job.name_key == name.lower()))

    async def search(self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Job]:
        return await self.page(select(Job), limit=limit, cursor=cursor)


class VersionRepository(Repository[JobVersion]):
    model = JobVersion

    async def history(self, job_id: uuid.UUID, *, limit: int = DEFAULT_LIMIT,
                      cursor: str | None = None) -> Page[JobVersion]:
        """Oldest first."""
        return await self.page(select(JobVersion).where(JobVersion.job_id == job_id), limit=limit,
                               cursor=cursor)

    async def at(self, job_id: uuid.UUID, version: int) -> JobVersion | None:
        return await self.session.scalar(select(JobVersion).where(
            JobVersion.job_id == job_id, JobVersion.version == version))


class ApprovalRepository(Repository[Approval]):
    model = Approval

    async def find(self, job_id: uuid.UUID, step_name: str, sha256: str) -> Approval | None:
        return await self.session.scalar(select(Approval).where(
            Approval.job_id == job_id, Approval.step_name == step_name,
            Approval.step_sha256 == sha256))

    async def for_jobs(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Approval]]:
        found: dict[uuid.UUID, list[Approval]] = defaultdict(list)
        ids = sorted(set(job_ids))
        for start in range(0, len(ids), 500):  # stay under every driver's bind limit
            stmt = (select(Approval).where(Approval.job_id.in_(ids[start:start + 500]))
                    .order_by(Approval.approved_at, Approval.id))
            for approval in (await self.session.scalars(stmt)).all():
                found[approval.job_id].append(approval)
        return found
