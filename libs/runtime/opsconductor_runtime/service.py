"""The lifespan every service shares: migrate, start the outbox relay, stop cleanly."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import Table

from opsconductor_core.settings import PlatformSettings
from opsconductor_db.database import ServiceDatabase, is_sqlite, sqlite_file
from opsconductor_db.migrations import upgrade_async
from opsconductor_runtime.interface import Runtime
from opsconductor_runtime.outbox import OutboxRelay

log = logging.getLogger("opsconductor.service")


@asynccontextmanager
async def service_lifespan(
    *,
    db: ServiceDatabase,
    runtime: Runtime,
    outbox: Table,
    pubsub: str,
    migrations_dir: Path,
    migrate: bool = True,
    outbox_paused: bool | None = None,
    close_runtime: bool = False,
) -> AsyncIterator[OutboxRelay]:
    """`close_runtime`: the app created its own runtime (started alone), so it closes it too."""
    if is_sqlite(db.url):
        sqlite_file(db.url).parent.mkdir(parents=True, exist_ok=True)
    if migrate:
        await upgrade_async(db.url, migrations_dir)
    if outbox_paused is None:
        outbox_paused = PlatformSettings().outbox_paused
    relay = OutboxRelay(db, outbox, runtime, pubsub, paused=outbox_paused)
    relay.start()
    log.info("service started", extra={"app_id": runtime.app_id})
    try:
        yield relay
    finally:
        await relay.stop()
        await db.dispose()
        if close_runtime:
            await runtime.close()
