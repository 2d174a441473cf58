"""Durable writes of running executions, grouped: many targets' hook calls, one transaction.

A fan-out over hundreds of targets reports hundreds of starts, step dispatches and outputs at
once; one transaction each would queue them all behind SQLite's single writer. The writer takes
whatever is waiting, applies it in order in one transaction (Changes with a few bulk statements,
see changes.py), and answers every caller when it committed (so a step is durably marked
dispatched before its command is sent). A batch that fails is replayed one write per
transaction, so one bad write fails only its own caller.

Live `execution.output` events go out after their chunks committed, in order, best-effort: a
bounded queue drops the oldest when the broker is slower than the output (consumers read the
gap back from storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts.components import PUBSUB
from opsconductor_db.database import ServiceDatabase
from opsconductor_executor.changes import Bulk, Changes
from opsconductor_executor.journal import LeaseLost
from opsconductor_runtime.interface import Runtime

log = logging.getLogger("opsconductor.executor.recording")

# Rows as data (grouped with other writes), or anything else done in the batch's transaction.
Write = Changes | Callable[[AsyncSession], Awaitable[None]]
AfterCommit = Callable[[], None]
MAX_BATCH = 500


@dataclass(eq=False)
class _Pending:
    write: Write
    after_commit: AfterCommit | None
    # Checked just before the write: False drops it (its execution was lost to another replica).
    guard: Callable[[], bool] | None = None
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupWriter:
    def __init__(self, db: ServiceDatabase) -> None:
        self._db = db
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="executor-group-writer")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Apply what was queued, then stop. Never cut a transaction short (a connection
        cancelled mid-query cannot be closed cleanly), unless it takes longer than `timeout_s`."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            self._queue.put_nowait(None)
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.done.done():
                pending.done.set_exception(RuntimeError("the executor is shutting down"))

    def submit(self, write: Write, after_commit: AfterCommit | None = None,
               guard: Callable[[], bool] | None = None) -> asyncio.Future[None]:
        """Queue `write` now (callers keep their order); the future resolves once committed,
        or fails (also when the writer is stopping, or `guard()` is false by then)."""
        pending = _Pending(write, after_commit, guard)
        if self._closing or self._task is None:
            pending.done.set_exception(RuntimeError("the executor is shutting down"))
        else:
            self._queue.put_nowait(pending)
        return pending.done

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            batch = self._still_wanted(batch)
            if not batch:
                continue
            try:
                await self._apply(batch)
            except Exception:
                # Replay one by one: only the writes that fail on their own fail their caller.
                for pending in batch:
                    try:
                        await self._apply([pending])
                    except Exception as exc:
                        log.warning("execution write failed", extra={"error": type(exc).__name__})
                        if not pending.done.done():
                            pending.done.set_exception(exc)
                    await asyncio.sleep(0)

    @staticmethod
    def _still_wanted(batch: list[_Pending]) -> list[_Pending]:
        wanted = []
        for pending in batch:
            if pending.guard is not None and not pending.guard():
                pending.done.set_exception(LeaseLost("this replica no longer owns the execution"))
            else:
                wanted.append(pending)
        return wanted

    async def _apply(self, batch: list[_Pending]) -> None:
        async with self._db.transaction() as session:
            bulk = Bulk()
            for pending in batch:
                if isinstance(pending.write, Changes):
                    if bulk.conflicts(pending.write):
                        await bulk.flush(session)
                    bulk.add(pending.write)
                else:
                    await bulk.flush(session)
                    await pending.write(session)
            await bulk.flush(session)
        for pending in batch:
            if pending.after_commit is not None:
                try:
                    pending.after_commit()
                except Exception:
                    log.exception("after-commit callback failed")
            if not pending.done.done():
                pending.done.set_result(None)


class LivePublisher:
    """Publishes `execution.output` events in the order they were committed; never blocks."""

    def __init__(self, runtime: Runtime, *, capacity: int) -> None:
        self._runtime = runtime
        self._capacity = capacity
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="executor-live-output")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Hand over what is queued (bounded), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def offer(self, topic: str, event: dict[str, Any]) -> None:
        if self._queue.qsize() >= self._capacity:
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        self._queue.put_nowait((topic, event))

    async def drain(self) -> None:
        """Wait until everything offered so far was handed to the broker (tests, shutdown)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            topic, event = await self._queue.get()
            try:
                await self._runtime.publish(PUBSUB, topic, event, transient=True)
            except Exception as exc:
                # Best-effort: the chunks are stored, a consumer heals the gap from storage.
                log.warning("live output not published", extra={"topic": topic,
                                                                 "error": type(exc).__name__})
            finally:
                self._queue.task_done()
