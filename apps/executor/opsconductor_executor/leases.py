"""Keeping and finding work: the heartbeat and the recovery sweep of one replica.

Heartbeat (every `cancel_poll_s`): reads the cancel flag of the executions this replica runs,
so a cancel accepted by any replica reaches the engine within about that long, and every
`lease_s / 3` renews their leases. A lease that could not be renewed belongs to another replica
now: this one stops that run at once and drops what it had not written yet.

Sweep (at start, then every `sweep_interval_s`): claims unfinished executions nobody holds —
never claimed (a lost `execution.requested`), or whose owner stopped renewing (a dead replica).
Nothing stays running forever: some live replica always ends up owning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from opsconductor_db.types import utcnow
from opsconductor_executor.repository import ExecutionRepository
from opsconductor_executor.runner import Runner

log = logging.getLogger("opsconductor.executor.leases")


class Replica:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.settings = runner.settings
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._last_renewal = 0.0

    def start(self) -> None:
        self._stopping.clear()
        self.runner.start()
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="executor-heartbeat"),
                       asyncio.create_task(self._sweep_loop(), name="executor-sweep")]

    async def stop(self, *, release: bool = True) -> None:
        # The loops end between two rounds (cancelling one mid-query would strand its connection).
        self.runner.accepting = False
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=10.0)
            for task in late:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.runner.stop(release=release)

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; False once the replica is stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return not self._stopping.is_set()

    # --- heartbeat -------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = min(self.settings.cancel_poll_s, self.settings.lease_s / 3)
        while await self._pause(interval):
            try:
                await self.heartbeat()
            except Exception:
                log.warning("heartbeat failed; will retry", exc_info=True)

    async def heartbeat(self, *, renew: bool | None = None) -> None:
        ids = self.runner.running_ids
        if not ids:
            return
        if renew is None:
            renew = time.monotonic() - self._last_renewal >= self.settings.lease_s / 3
        async with self.runner.db.transaction() as session:
            repo = ExecutionRepository(session)
            if renew:
                until = utcnow() + timedelta(seconds=self.settings.lease_s)
                held = await repo.renew(ids, self.runner.replica_id, until)
                self._last_renewal = time.monotonic()
            else:
                held = set(ids)
            canceled = await repo.cancel_requested(list(held))
        for execution_id in ids:
            if execution_id not in held:
                log.warning("lease lost; stopping this replica's run", extra={
                    "execution_id": str(execution_id)})
                self.runner.detach(execution_id, lost=True)
            elif execution_id in canceled:
                self.runner.cancel_local(execution_id)

    # --- sweep -----------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.warning("recovery sweep failed; will retry", exc_info=True)
            await self._pause(self.settings.sweep_interval_s)

    async def sweep(self) -> int:
        """Claim what nobody holds, as far as this replica has room; returns how many."""
        runner = self.runner
        room = self.settings.max_running_executions - len(runner.running_ids)
        if room <= 0 or not runner.accepting:
            return 0
        async with runner.db.transaction() as session:
            found = await ExecutionRepository(session).claimable(
                runner.replica_id, utcnow(), limit=room, exclude=runner.running_ids)
        claimed = 0
        for execution_id in found:
            # Its own rows from an earlier life of this replica id are known to be orphaned.
            if await runner.claim_and_run(execution_id, take_own=True):
                claimed += 1
        if claimed:
            log.info("sweep claimed executions", extra={"count": claimed})
        return claimed
