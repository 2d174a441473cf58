"""The health sweep, run on each tick of the cron binding: reload the keyring, re-wrap data keys
still wrapped under an older master key, then check every target with bounded concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from opsconductor_contracts.components import STATE_STORE, TARGETS_HEALTH_LEASE_KEY
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.problems import DomainError
from opsconductor_db.database import ServiceDatabase
from opsconductor_runtime.interface import ETagMismatch, Runtime
from opsconductor_targets.checks import CheckLimits, CheckOutcome, run_check, unusable_credential
from opsconductor_targets.config import Settings
from opsconductor_targets.crypto import CredentialUnavailable, SealedCredential, rewrap
from opsconductor_targets.exceptions import CredentialUnreadable
from opsconductor_targets.repository import CredentialRepository, TargetRepository
from opsconductor_targets.service import SYSTEM_ACTOR, TargetsService
from opsconductor_targets.vault import CredentialVault

log = logging.getLogger("opsconductor.targets.health")


class HealthSweeper:
    def __init__(self, *, db: ServiceDatabase, runtime: Runtime, vault: CredentialVault,
                 publisher: EventPublisher, settings: Settings) -> None:
        self.db = db
        self.runtime = runtime
        self.vault = vault
        self.publisher = publisher
        self.settings = settings
        self.limits = CheckLimits(resolve_s=min(5.0, settings.health_timeout_s),
                                  connect_s=settings.health_timeout_s,
                                  auth_s=settings.health_timeout_s,
                                  command_s=settings.health_timeout_s)
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._owner = uuid.uuid4().hex

    def service(self, session: Any) -> TargetsService:
        return TargetsService(session, self.publisher, self.vault, self.settings)

    # --- the tick ----------------------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """Start a sweep unless one runs; wait a while for its summary (it goes on regardless)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.sweep(), name="targets-health-sweep")
            self._task.add_done_callback(_log_failure)
        try:
            async with asyncio.timeout(self.settings.tick_wait_s):
                return await asyncio.shield(self._task)
        except TimeoutError:
            return {"status": "SUCCESS", "running": True}

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None

    async def sweep(self) -> dict[str, Any]:
        started = time.monotonic()
        if not await self._acquire():
            log.info("health sweep skipped: another replica holds the lease")
            return {"status": "SUCCESS", "skipped": True}
        try:
            await self.vault.reload()
            rewrapped = await self.rewrap_all()
            checked, changed = await self.check_all()
        finally:
            await self._release()
        summary = {"status": "SUCCESS", "checked": checked, "changed": changed,
                   "rewrapped": rewrapped, "duration_ms": round((time.monotonic() - started) * 1000)}
        log.info("health sweep done", extra={k: v for k, v in summary.items() if k != "status"})
        return summary

    # --- one replica at a time ---------------------------------------------------------------

    async def _acquire(self) -> bool:
        try:
            await self.runtime.save_state(STATE_STORE, TARGETS_HEALTH_LEASE_KEY,
                                          self._owner.encode(), etag="",
                                          ttl_s=self.settings.health_lease_s)
        except ETagMismatch:
            return False
        except Exception as exc:  # no state store: sweeping twice beats never sweeping
            log.warning("health lease unavailable", extra={"error": type(exc).__name__})
        return True

    async def _release(self) -> None:
        with contextlib.suppress(Exception):
            item = await self.runtime.get_state(STATE_STORE, TARGETS_HEALTH_LEASE_KEY)
            if item is not None and item.value == self._owner.encode():
                await self.runtime.delete_state(STATE_STORE, TARGETS_HEALTH_LEASE_KEY,
                                                etag=item.etag)

    # --- master-key rotation -----------------------------------------------------------------

    async def rewrap_all(self) -> int:
        """Re-wrap every data key not under the active master key, one batch per transaction."""
        keyring = self.vault.keyring
        if keyring is None:
            return 0
        done = 0
        failed: list[uuid.UUID] = []
        while True:
            async with self.db.transaction() as session:
                rows = await CredentialRepository(session).wrapped_under_other_keys(
                    keyring.active, limit=self.settings.rewrap_batch, skip=failed)
                if not rows:
                    break
                for row in rows:
                    sealed = SealedCredential(row.key_id, row.wrapped_key, row.ciphertext)
                    try:
                        fresh = rewrap(row.target_id, sealed, keyring)
                    except CredentialUnavailable:
                        failed.append(row.target_id)
                        continue
                    row.key_id, row.wrapped_key = fresh.key_id, fresh.wrapped_key
                    done += 1
        if done:
            log.info("credentials re-wrapped", extra={"count": done, "active_key": keyring.active})
        if failed:
            log.error("credentials could not be re-wrapped (their master key is missing or they "
                      "were tampered with)", extra={"count": len(failed)})
        return done

    # --- reachability ------------------------------------------------------------------------

    async def check_all(self) -> tuple[int, int]:
        semaphore = asyncio.Semaphore(self.settings.health_concurrency)
        checked = changed = 0
        after: uuid.UUID | None = None
        while True:
            async with self.db.transaction() as session:
                ids = await TargetRepository(session).all_ids(after=after)
            if not ids:
                return checked, changed
            after = ids[-1]

            async def one(target_id: uuid.UUID) -> bool | None:
                async with semaphore:
                    return await self.check_one(target_id)

            for result in await asyncio.gather(*(one(i) for i in ids)):
                if result is not None:
                    checked += 1
                    changed += int(result)

    async def check_one(self, target_id: uuid.UUID, *, source: str = "health",
                        actor: str = SYSTEM_ACTOR) -> bool | None:
        """Check and record one target; True if its status changed, None if it is gone."""
        try:
            async with self.db.transaction() as session:
                snapshot = await self.service(session).check_target(target_id)
        except CredentialUnreadable as exc:
            recorded = await self.record(target_id, unusable_credential(exc.detail),
                                         source=source, actor=actor)
            return None if recorded is None else recorded[0] != recorded[1]
        except DomainError as exc:
            if exc.status == 404:
                return None
            log.warning("target not checked", extra={"target_id": str(target_id),
                                                      "reason": exc.detail})
            return None
        try:
            outcome = await run_check(snapshot, allow_loopback=self.settings.allow_loopback,
                                      limits=self.limits)
        except Exception:
            log.exception("health check failed", extra={"target_id": str(target_id)})
            return None
        recorded = await self.record(target_id, outcome, source=source, actor=actor)
        return None if recorded is None else recorded[0] != recorded[1]

    async def record(self, target_id: uuid.UUID, outcome: CheckOutcome, *, source: str,
                     actor: str) -> tuple[str, str] | None:
        """(previous status, new status), or None when the target was deleted meanwhile."""
        async with self.db.transaction() as session:
            target = await TargetRepository(session).get(target_id)
            if target is None:
                return None
            previous = target.status
            status = await self.service(session).record_check(target, outcome, source=source,
                                                              actor=actor)
        return previous, status


def _log_failure(task: asyncio.Task[dict[str, Any]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("health sweep failed", exc_info=task.exception())
