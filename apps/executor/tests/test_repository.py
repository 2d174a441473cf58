"""SQL behaviour on each database: schema, the claim race, leases, pagination, the stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_executor.models import Base, Execution, ExecutionTarget
from opsconductor_executor.repository import ExecutionRepository


async def add_execution(db: ServiceDatabase, *, targets: int = 1, status: str = "queued",
                        owner: str | None = None, lease_s: float = 0, job_id: str = "job-1",
                        created_offset_s: float = 0) -> uuid.UUID:
    now = utcnow()
    execution_id = uuid.uuid4()
    async with db.transaction() as session:
        session.add(Execution(
            id=execution_id, job_id=job_id, job_name="deploy", job_version=1, status=status,
            trigger="manual", requested_by="u1", spec="{}", secret_names="[]",
            total_targets=targets, created_at=now + timedelta(seconds=created_offset_s),
            owner=owner, lease_until=now + timedelta(seconds=lease_s) if owner else None,
            cancel_requested=False))
        await session.flush()
        session.add_all([ExecutionTarget(execution_id=execution_id, target_id=f"t{i}",
                                         position=i, name=f"web{i}", protocol="ssh",
                                         status="pending", attempts=0, output_truncated=False,
                                         next_step=0) for i in range(targets)])
    return execution_id


class TestSchema:
    async def test_migration_matches_the_models(self, db: ServiceDatabase) -> None:
        def diff(connection: object) -> list[object]:
            context = MigrationContext.configure(connection)  # type: ignore[arg-type]
            return compare_metadata(context, Base.metadata)

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == []


class TestClaim:
    async def test_of_many_racing_replicas_exactly_one_wins(self, db: ServiceDatabase) -> None:
        for _ in range(5):
            execution_id = await add_execution(db)
            now = utcnow()

            async def claim(owner: str, execution_id: uuid.UUID = execution_id,
                            now: object = now) -> bool:
                async with db.transaction() as session:
                    return await ExecutionRepository(session).claim(
                        execution_id, owner, now=now,  # type: ignore[arg-type]
                        lease_until=now + timedelta(seconds=15))  # type: ignore[operator]

            results = await asyncio.gather(*(claim(f"r{i}") for i in range(6)))
            assert results.count(True) == 1

    async def test_a_fresh_lease_holds_and_an_expired_one_does_not(self, db: ServiceDatabase) -> None:
        held = await add_execution(db, status="running", owner="alive", lease_s=30)
        expired = await add_execution(db, status="running", owner="dead", lease_s=-1)
        finished = await add_execution(db, status="succeeded", owner=None)
        now = utcnow()
        async with db.transaction() as session:
            repo = ExecutionRepository(session)
            until = now + timedelta(seconds=15)
            assert not await repo.claim(held, "me", now=now, lease_until=until)
            assert await repo.claim(expired, "me", now=now, lease_until=until)
            assert not await repo.claim(finished, "me", now=now, lease_until=until)
            # Its own row counts as free only when asked (a restart that kept the replica id).
            assert not await repo.claim(held, "alive", now=now, lease_until=until)
            assert await repo.claim(held, "alive", now=now, lease_until=until, take_own=True)

    async def test_claimable_finds_orphans_oldest_first(self, db: ServiceDatabase) -> None:
        queued = await add_execution(db, created_offset_s=-30)
        orphan = await add_execution(db, status="running", owner="dead", lease_s=-5,
                                     created_offset_s=-20)
        await add_execution(db, status="running", owner="alive", lease_s=30)
        mine = await add_execution(db, status="running", owner="me", lease_s=30,
                                   created_offset_s=-10)
        await add_execution(db, status="failed")
        async with db.transaction() as session:
            repo = ExecutionRepository(session)
            assert await repo.claimable("me", utcnow(), limit=10) == [queued, orphan, mine]
            assert await repo.claimable("me", utcnow(), limit=10, exclude=[mine]) == [queued, orphan]
            assert await repo.claimable("me", utcnow(), limit=1) == [queued]

    async def test_renew_reports_what_is_still_held(self, db: ServiceDatabase) -> None:
        mine = await add_execution(db, status="running", owner="me", lease_s=1)
        taken = await add_execution(db, status="running", owner="other", lease_s=30)
        async with db.transaction() as session:
            held = await ExecutionRepository(session).renew([mine, taken], "me",
                                                            utcnow() + timedelta(seconds=60))
        assert held == {mine}
        async with db.transaction() as session:
            row = await session.get(Execution, mine)
            assert row is not None and row.lease_until is not None
            assert row.lease_until > utcnow() + timedelta(seconds=50)


class TestReads:
    async def test_executions_newest_first_with_filters_and_cursor(self, db: ServiceDatabase) -> None:
        ids = [await add_execution(db, job_id="a" if i % 2 else "b", created_offset_s=i)
               for i in range(5)]
        async with db.transaction() as session:
            repo = ExecutionRepository(session)
            first = await repo.search(limit=2)
            assert [e.id for e in first.items] == [ids[4], ids[3]]
            second = await repo.search(limit=2, cursor=first.next_cursor)
            assert [e.id for e in second.items] == [ids[2], ids[1]]
            assert [e.id for e in (await repo.search(job_id="a")).items] == [ids[3], ids[1]]
            assert (await repo.search(status="running")).items == []

    async def test_targets_page_in_request_order(self, db: ServiceDatabase) -> None:
        execution_id = await add_execution(db, targets=5)
        async with db.transaction() as session:
            repo = ExecutionRepository(session)
            page = await repo.targets_page(execution_id, limit=3)
            assert [t.name for t in page.items] == ["web0", "web1", "web2"]
            rest = await repo.targets_page(execution_id, limit=3, cursor=page.next_cursor)
            assert [t.name for t in rest.items] == ["web3", "web4"] and rest.next_cursor is None

    async def test_records_in_seq_order(self, db: ServiceDatabase) -> None:
        execution_id = await add_execution(db)
        now = utcnow()
        async with db.transaction() as session:
            repo = ExecutionRepository(session)
            await repo.add_records([
                {"execution_id": execution_id, "seq": seq, "event": event, "target_id": target,
                 "stream": "stdout" if event == "output" else None,
                 "data": f"chunk {seq}" if event == "output" else json.dumps({"seq": seq}),
                 "ts": now}
                for seq, event, target in [(3, "output", "t1"), (1, "started", None),
                                           (2, "output", "t0"), (4, "finished", None)]])
        async with db.transaction() as session:
            repo = ExecutionRepository(session)
            assert [r.seq for r in await repo.records(execution_id)] == [1, 2, 3, 4]
            assert [r.seq for r in await repo.records(execution_id, output_only=True)] == [2, 3]
            assert [r.seq for r in await repo.records(execution_id, target_id="t1")] == [3]
            assert [r.seq for r in await repo.records(execution_id, after_seq=2, limit=1)] == [3]
            assert await repo.max_seq(execution_id) == 4
