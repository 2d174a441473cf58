"""Transactional outbox and idempotent-consumer inbox.

An event row is written in the same transaction as the change it announces, so it exists if
and only if the change committed. The relay publishes rows after commit and deletes them only
once the broker accepted them: a crash in between means the event goes out again (at least
once), and consumers drop duplicates by event id through `processed_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_db.database import ServiceDatabase, is_sqlite, notify_on_commit
from opsconductor_runtime.interface import Runtime

log = logging.getLogger("opsconductor.outbox")

OUTBOX_TABLE = "outbox"
PROCESSED_TABLE = "processed_events"


def _outbox_columns() -> list[Column[Any]]:
    return [
        # Integer on SQLite so the column is the rowid alias and autoincrements.
        Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
               autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("payload", Text, nullable=False),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def _processed_columns() -> list[Column[Any]]:
    return [
        Column("event_id", String(64), primary_key=True),
        Column("topic", String(200), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def outbox_table(metadata: MetaData) -> Table:
    return Table(OUTBOX_TABLE, metadata, *_outbox_columns())


def processed_events_table(metadata: MetaData) -> Table:
    return Table(PROCESSED_TABLE, metadata, *_processed_columns())


def create_outbox_tables(op: Any) -> None:
    """For a service's first Alembic revision: `create_outbox_tables(op)`."""
    op.create_table(OUTBOX_TABLE, *_outbox_columns())
    op.create_table(PROCESSED_TABLE, *_processed_columns())


async def enqueue(session: AsyncSession, table: Table, topic: str, event: dict[str, Any]) -> None:
    await session.execute(insert(table).values(event_id=str(event["id"]), topic=topic,
                                               payload=json.dumps(event)))
    notify_on_commit(session)


async def enqueue_many(session: AsyncSession, table: Table,
                       events: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Many `(topic, event)` in one statement, published in this order."""
    if not events:
        return
    await session.execute(insert(table), [
        {"event_id": str(event["id"]), "topic": topic, "payload": json.dumps(event)}
        for topic, event in events])
    notify_on_commit(session)


async def first_delivery(session: AsyncSession, table: Table, event_id: str, topic: str) -> bool:
    """Record that this event is being handled; False if it was handled before (skip it).

    Call inside the handler's transaction so the record commits with the effect.
    """
    exists = await session.scalar(select(table.c.event_id).where(table.c.event_id == event_id))
    if exists is not None:
        return False
    try:
        async with session.begin_nested():
            await session.execute(insert(table).values(event_id=event_id, topic=topic))
    except IntegrityError:
        return False
    return True


class OutboxRelay:
    """Publishes committed outbox rows; woken after each commit, and polls as a safety net."""

    def __init__(self, db: ServiceDatabase, table: Table, runtime: Runtime, pubsub: str, *,
                 poll_interval_s: float = 1.0, batch_size: int = 100, paused: bool = False,
                 coalesce_s: float = 0.01) -> None:
        self._db = db
        self._table = table
        self._runtime = runtime
        self._pubsub = pubsub
        self._poll = poll_interval_s
        self._batch = batch_size
        self._paused = paused
        self._coalesce = coalesce_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._db.on_commit(self.wake)
        if not self._paused:
            self._task = asyncio.create_task(self._run(), name=f"outbox-relay:{self._runtime.app_id}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def pending(self) -> int:
        async with self._db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(self._table)) or 0)

    async def _run(self) -> None:
        while True:
            try:
                published = await self.flush_once()
                self._failures = 0
            except Exception:
                self._failures += 1
                log.warning("outbox publish failed; will retry", exc_info=True,
                            extra={"attempt": self._failures})
                published = 0
            if published >= self._batch:
                continue
            # Back off while the broker is down; otherwise wait for the next commit.
            timeout = min(self._poll * (2 ** min(self._failures, 5)), 30.0)
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands as
            # the event is set, and stop() would then wait for this loop forever.
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
                    woken = True
            if woken and self._coalesce > 0:
                # Commits landing close together (a run's last status changes, many runs at
                # once) go out in one batch: one read and one delete instead of one each.
                await asyncio.sleep(self._coalesce)
            self._wakeup.clear()

    async def flush_once(self) -> int:
        """Publish one batch in order; stops at the first failure so order is kept."""
        table = self._table
        async with self._db.sessions() as session:
            stmt = select(table.c.seq, table.c.topic, table.c.payload).order_by(table.c.seq)
            stmt = stmt.limit(self._batch)
            if not is_sqlite(self._db.url):
                # Replicas share the table: each row is taken by one relay at a time.
                stmt = stmt.with_for_update(skip_locked=True)
            rows = (await session.execute(stmt)).all()
            done: list[int] = []
            try:
                for seq, topic, payload in rows:
                    await self._runtime.publish(self._pubsub, topic, json.loads(payload))
                    done.append(seq)
            finally:
                if done:
                    await session.execute(delete(table).where(table.c.seq.in_(done)))
                await session.commit()
        return len(done)
