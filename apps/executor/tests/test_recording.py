"""The group writer and the live publisher: many reports in one transaction, in order; one bad
write fails only its caller; a lost execution's queued writes are dropped; live output is
best-effort and bounded."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_executor.changes import Changes
from opsconductor_executor.journal import Journal, LeaseLost
from opsconductor_executor.models import Execution, ExecutionRecord, ExecutionTarget, outbox
from opsconductor_executor.recording import GroupWriter, LivePublisher
from opsconductor_testing.runtime import RecordingRuntime


async def new_execution(db: ServiceDatabase, targets: int = 3) -> uuid.UUID:
    execution_id = uuid.uuid4()
    async with db.transaction() as session:
        session.add(Execution(id=execution_id, job_id="j", job_name="j", job_version=1,
                              status="running", trigger="manual", requested_by="u", spec="{}",
                              secret_names="[]", total_targets=targets, created_at=utcnow(),
                              cancel_requested=False))
        await session.flush()
        session.add_all([ExecutionTarget(execution_id=execution_id, target_id=f"t{i}", position=i,
                                         name=f"t{i}", protocol="ssh", status="pending",
                                         attempts=0, output_truncated=False, next_step=0)
                         for i in range(targets)])
    return execution_id


async def targets(db: ServiceDatabase, execution_id: uuid.UUID) -> dict[str, ExecutionTarget]:
    async with db.transaction() as session:
        rows = await session.scalars(select(ExecutionTarget).where(
            ExecutionTarget.execution_id == execution_id))
        return {r.target_id: r for r in rows}


class TestGroupWriter:
    async def test_concurrent_reports_share_transactions_and_keep_order(
            self, db: ServiceDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
        execution_id = await new_execution(db)
        journal = Journal(execution_id, job_id="j", actor="u", last_seq=0)
        writer = GroupWriter(db)
        transactions = 0
        original = db.transaction

        def counting() -> Any:
            nonlocal transactions
            transactions += 1
            return original()

        monkeypatch.setattr(db, "transaction", counting)
        writer.start()
        try:
            futures = []
            for i in range(3):
                futures.append(writer.submit(Changes(execution_id, f"t{i}",
                                                     target={"inflight_step": 0})))
                # The same target again in the same batch: applied after the first.
                futures.append(writer.submit(Changes(execution_id, f"t{i}", target={
                    "inflight_step": None, "next_step": 1, "status": "running"})))
                futures.append(writer.submit(journal.target_finished(
                    f"t{i}", "succeeded", exit_code=0, attempts=1, error=None)))
            await asyncio.gather(*futures)
        finally:
            await writer.stop()
        assert transactions <= 2  # nine reports, one batch (two if the loop woke in between)
        rows = await targets(db, execution_id)
        assert {(r.inflight_step, r.next_step, r.status) for r in rows.values()} == {
            (None, 1, "running")}
        async with db.transaction() as session:
            seqs = list((await session.scalars(select(ExecutionRecord.seq).order_by(
                ExecutionRecord.seq))).all())
            events = (await session.execute(select(outbox.c.topic, outbox.c.payload)
                                            .order_by(outbox.c.seq))).all()
        assert seqs == [1, 2, 3]
        assert [json.loads(p)["data"]["seq"] for _, p in events] == [1, 2, 3]

    async def test_a_bad_write_fails_alone(self, db: ServiceDatabase) -> None:
        execution_id = await new_execution(db)
        writer = GroupWriter(db)
        writer.start()
        try:
            good = writer.submit(Changes(execution_id, "t0", target={"attempts": 1}))
            # A record whose seq is taken twice: the second insert violates the primary key.
            row = {"execution_id": execution_id, "seq": 7, "event": "status", "target_id": None,
                   "stream": None, "data": "{}", "ts": utcnow()}
            first = writer.submit(Changes(execution_id, records=[dict(row)]))
            twice = writer.submit(Changes(execution_id, records=[dict(row)]))
            also_good = writer.submit(Changes(execution_id, "t1", target={"attempts": 2}))
            results = await asyncio.gather(good, first, twice, also_good,
                                           return_exceptions=True)
        finally:
            await writer.stop()
        assert results[0] is None and results[1] is None and results[3] is None
        assert isinstance(results[2], Exception)
        rows = await targets(db, execution_id)
        assert (rows["t0"].attempts, rows["t1"].attempts) == (1, 2)

    async def test_a_lost_executions_queued_writes_are_dropped(self, db: ServiceDatabase) -> None:
        execution_id = await new_execution(db)
        writer = GroupWriter(db)
        writer.start()
        lost = True
        try:
            dropped = writer.submit(Changes(execution_id, "t0", target={"attempts": 5}),
                                    guard=lambda: not lost)
            with pytest.raises(LeaseLost):
                await dropped
        finally:
            await writer.stop()
        assert (await targets(db, execution_id))["t0"].attempts == 0

    async def test_after_stop_writes_fail(self, db: ServiceDatabase) -> None:
        execution_id = await new_execution(db)
        writer = GroupWriter(db)
        writer.start()
        queued = writer.submit(Changes(execution_id, "t0", target={"attempts": 3}))
        await writer.stop()
        await queued  # what was queued before the stop is written
        with pytest.raises(RuntimeError):
            await writer.submit(Changes(execution_id, "t1", target={"attempts": 3}))
        assert (await targets(db, execution_id))["t0"].attempts == 3
        async with db.transaction() as session:
            assert await session.scalar(select(func.count()).select_from(ExecutionRecord)) == 0


class TestLivePublisher:
    async def test_in_order_and_best_effort(self) -> None:
        runtime = RecordingRuntime()
        live = LivePublisher(runtime, capacity=100)
        live.start()
        try:
            for n in range(5):
                live.offer("execution.output", {"id": str(n)})
            await live.drain()
            runtime.fail_publish = True
            live.offer("execution.output", {"id": "lost"})
            await live.drain()  # a failure is logged, never raised
        finally:
            await live.stop()
        assert [p.event["id"] for p in runtime.published] == ["0", "1", "2", "3", "4"]

    async def test_a_slow_broker_drops_the_oldest(self) -> None:
        gate = asyncio.Event()

        class SlowRuntime(RecordingRuntime):
            async def publish(self, pubsub: str, topic: str, event: dict[str, Any], *,
                              transient: bool = False) -> None:
                await gate.wait()
                await super().publish(pubsub, topic, event, transient=transient)

        runtime = SlowRuntime()
        live = LivePublisher(runtime, capacity=2)
        live.start()
        try:
            live.offer("t", {"id": "first"})
            await asyncio.sleep(0.01)  # "first" is being published
            for n in range(4):
                live.offer("t", {"id": f"queued-{n}"})
            gate.set()
            await live.drain()
        finally:
            await live.stop()
        assert [p.event["id"] for p in runtime.published] == ["first", "queued-2", "queued-3"]
        assert live.dropped == 2
