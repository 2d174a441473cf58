"""SQL of the jobs service on both databases: names, versions, approvals, cascades."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select

from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_jobs.models import Approval, Job, JobVersion
from opsconductor_jobs.repository import ApprovalRepository, JobRepository, VersionRepository

DEFINITION = {"steps": [{"name": "a", "kind": "command", "command": "uptime"}]}


def job(name: str) -> Job:
    now = utcnow()
    return Job(id=uuid.uuid4(), name=name, name_key=name.lower(), description="", owner_id="u1",
               version=1, definition=DEFINITION, created_at=now, updated_at=now, updated_by="u1")


class TestJobs:
    async def test_by_name_ignores_case(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            await JobRepository(session).add(job("Nightly-Backup"))
        async with db.transaction() as session:
            found = await JobRepository(session).by_name("NIGHTLY-backup")
            assert found is not None and found.name == "Nightly-Backup"
            assert found.definition == DEFINITION
            assert await JobRepository(session).by_name("other") is None


class TestVersions:
    async def test_history_is_oldest_first_and_paged(self, db: ServiceDatabase) -> None:
        parent = job("j")
        start = utcnow()
        async with db.transaction() as session:
            await JobRepository(session).add(parent)
            for n in range(1, 5):
                session.add(JobVersion(id=uuid.uuid4(), job_id=parent.id, version=n, name="j",
                                       description="", definition=DEFINITION, changed=["steps"],
                                       created_at=start + timedelta(seconds=n), created_by="u1"))
        async with db.transaction() as session:
            versions = VersionRepository(session)
            first = await versions.history(parent.id, limit=3)
            assert [v.version for v in first.items] == [1, 2, 3]
            rest = await versions.history(parent.id, limit=3, cursor=first.next_cursor)
            assert [v.version for v in rest.items] == [4] and rest.next_cursor is None
            at = await versions.at(parent.id, 2)
            assert at is not None and at.changed == ["steps"]
            assert await versions.at(parent.id, 9) is None


class TestApprovals:
    async def test_find_and_group_and_cascade(self, db: ServiceDatabase) -> None:
        one, two = job("one"), job("two")
        async with db.transaction() as session:
            for parent in (one, two):
                await JobRepository(session).add(parent)
                session.add(JobVersion(id=uuid.uuid4(), job_id=parent.id, version=1, name="x",
                                       description="", definition=DEFINITION, changed=[],
                                       created_at=utcnow(), created_by="u1"))
                session.add(Approval(id=uuid.uuid4(), job_id=parent.id, version=1, step_name="a",
                                     step_sha256="0" * 64, rules=["power-off"], approved_by="u2",
                                     approved_at=utcnow(), created_at=utcnow()))
        async with db.transaction() as session:
            approvals = ApprovalRepository(session)
            found = await approvals.find(one.id, "a", "0" * 64)
            assert found is not None and found.rules == ["power-off"]
            assert await approvals.find(one.id, "a", "1" * 64) is None
            grouped = await approvals.for_jobs([one.id, two.id, uuid.uuid4()])
            assert {k: len(v) for k, v in grouped.items()} == {one.id: 1, two.id: 1}
        async with db.transaction() as session:
            repo = JobRepository(session)
            target = await repo.get(one.id)
            assert target is not None
            await repo.delete(target)
        async with db.transaction() as session:
            for model in (JobVersion, Approval):
                count = await session.scalar(select(func.count()).select_from(model).where(
                    model.job_id == one.id))
                assert count == 0, model
            left = await session.scalar(select(func.count()).select_from(Approval))
            assert left == 1
