"""Outbox and inbox on a real SQLite database, publishing through the real embedded broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from dapr.ext.fastapi import DaprApp
from fastapi import FastAPI, Request
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from opsconductor_db import ServiceDatabase
from opsconductor_runtime.embedded import EmbeddedHost
from opsconductor_runtime.outbox import (
    OutboxRelay,
    enqueue,
    first_delivery,
    outbox_table,
    processed_events_table,
)
from opsconductor_testing.runtime import RecordingRuntime

metadata = MetaData()
things = Table("things", metadata, Column("id", Integer, primary_key=True), Column("name", String))
counter = Table("counter", metadata, Column("id", Integer, primary_key=True),
                Column("seen", Integer, nullable=False))
outbox = outbox_table(metadata)
processed = processed_events_table(metadata)


async def make_db(path: Path) -> ServiceDatabase:
    db = ServiceDatabase(f"sqlite+aiosqlite:///{path}")
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return db


def thing_event(event_id: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": "t", "type": "thing.created",
            "data": {}}


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


class TestOutbox:
    async def test_committed_change_is_published_once(self, tmp_path: Path) -> None:
        db = await make_db(tmp_path / "svc.db")
        runtime = RecordingRuntime(app_id="svc")
        relay = OutboxRelay(db, outbox, runtime, "pubsub", poll_interval_s=0.05)
        relay.start()
        try:
            async with db.transaction() as session:
                await session.execute(insert(things).values(name="a"))
                await enqueue(session, outbox, "thing.created", thing_event("ev-1"))

            async def published() -> bool:
                return len(runtime.published) == 1

            await wait_for(published)
            assert runtime.published[0].event["id"] == "ev-1"
            assert await relay.pending() == 0
        finally:
            await relay.stop()
            await db.dispose()

    async def test_rolled_back_change_publishes_nothing(self, tmp_path: Path) -> None:
        db = await make_db(tmp_path / "svc.db")
        runtime = RecordingRuntime(app_id="svc")
        relay = OutboxRelay(db, outbox, runtime, "pubsub", poll_interval_s=0.05)
        relay.start()
        try:
            with pytest.raises(RuntimeError):
                async with db.transaction() as session:
                    await session.execute(insert(things).values(name="b"))
                    await enqueue(session, outbox, "thing.created", thing_event("ev-2"))
                    raise RuntimeError("rule broken after the write")
            await relay.flush_once()
            assert runtime.published == []
            assert await relay.pending() == 0
        finally:
            await relay.stop()
            await db.dispose()

    async def test_events_wait_while_the_broker_is_down(self, tmp_path: Path) -> None:
        db = await make_db(tmp_path / "svc.db")
        runtime = RecordingRuntime(app_id="svc", fail_publish=True)
        relay = OutboxRelay(db, outbox, runtime, "pubsub", poll_interval_s=0.02)
        relay.start()
        try:
            async with db.transaction() as session:
                await enqueue(session, outbox, "thing.created", thing_event("ev-3"))
            await asyncio.sleep(0.2)
            assert await relay.pending() == 1
            runtime.fail_publish = False
            relay.wake()

            async def published() -> bool:
                return [p.event["id"] for p in runtime.published] == ["ev-3"]

            await wait_for(published)
        finally:
            await relay.stop()
            await db.dispose()

    async def test_paused_relay_keeps_events_for_the_next_start(self, tmp_path: Path) -> None:
        db = await make_db(tmp_path / "svc.db")
        runtime = RecordingRuntime(app_id="svc")
        paused = OutboxRelay(db, outbox, runtime, "pubsub", paused=True)
        paused.start()
        async with db.transaction() as session:
            await enqueue(session, outbox, "thing.created", thing_event("ev-4"))
        await asyncio.sleep(0.1)
        assert runtime.published == [] and await paused.pending() == 1
        resumed = OutboxRelay(db, outbox, runtime, "pubsub")
        assert await resumed.flush_once() == 1
        assert [p.event["id"] for p in runtime.published] == ["ev-4"]
        await db.dispose()


class CountingConsumer:
    """A real idempotent consumer: the effect and the inbox row commit together."""

    def __init__(self, db: ServiceDatabase) -> None:
        self.db = db
        self.app = FastAPI()

        @DaprApp(self.app).subscribe(pubsub="pubsub", topic="thing.created", route="/events/thing")
        async def handle(request: Request) -> dict[str, str]:
            event = await request.json()
            async with self.db.transaction() as session:
                if await first_delivery(session, processed, event["id"], "thing.created"):
                    current = await session.scalar(select(counter.c.seen).where(counter.c.id == 1))
                    if current is None:
                        await session.execute(insert(counter).values(id=1, seen=1))
                    else:
                        await session.execute(counter.update().where(counter.c.id == 1)
                                              .values(seen=current + 1))
            return {"status": "SUCCESS"}

    async def seen(self) -> int:
        async with self.db.sessions() as session:
            return int(await session.scalar(select(func.coalesce(func.max(counter.c.seen), 0))) or 0)


class TestAtLeastOnceMeetsIdempotency:
    async def test_a_republished_event_is_applied_once(self, tmp_path: Path) -> None:
        """A relay that crashed after publishing but before deleting publishes again."""
        producer_db = await make_db(tmp_path / "producer.db")
        consumer = CountingConsumer(await make_db(tmp_path / "consumer.db"))
        host = EmbeddedHost(tmp_path / "host", backoff_base_s=0.01)
        await host.open()
        host.register("consumer", consumer.app)
        await host.start_delivery()
        runtime = host.runtime_for("producer")
        try:
            async with producer_db.transaction() as session:
                await enqueue(session, outbox, "thing.created", thing_event("dup-1"))
            # The crash window: published, row not yet deleted.
            await runtime.publish("pubsub", "thing.created", thing_event("dup-1"))
            relay = OutboxRelay(producer_db, outbox, runtime, "pubsub")
            assert await relay.flush_once() == 1

            async def drained() -> bool:
                return await host.broker.pending() == 0

            await wait_for(drained)
            assert await consumer.seen() == 1
        finally:
            await host.close()
            await producer_db.dispose()
            await consumer.db.dispose()
