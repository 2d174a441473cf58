"""The targets app: create_app() wires settings, database, runtime, keyring, routes and the tick."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_contracts.security import runtime_authenticator
from opsconductor_core.app import create_service_app
from opsconductor_db.database import ServiceDatabase
from opsconductor_runtime.factory import runtime_or_default
from opsconductor_runtime.interface import Runtime
from opsconductor_runtime.service import service_lifespan
from opsconductor_targets import api
from opsconductor_targets.config import APP_ID, Settings, get_settings
from opsconductor_targets.events import bindings
from opsconductor_targets.health import HealthSweeper
from opsconductor_targets.models import outbox
from opsconductor_targets.vault import CredentialVault

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime, owns_runtime = runtime_or_default(runtime, APP_ID)
    db = ServiceDatabase(settings.effective_database_url(APP_ID))
    publisher = EventPublisher(APP_ID, outbox)
    vault = CredentialVault(runtime)
    sweeper = HealthSweeper(db=db, runtime=runtime, vault=vault, publisher=publisher,
                            settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(db=db, runtime=runtime, outbox=outbox, pubsub=PUBSUB,
                                    migrations_dir=MIGRATIONS_DIR,
                                    outbox_paused=settings.outbox_paused,
                                    close_runtime=owns_runtime) as relay:
            app.state.relay = relay
            # Not fatal when missing: readiness says so and credential writes answer 503.
            await vault.reload()
            try:
                yield
            finally:
                await sweeper.stop()

    app = create_service_app(APP_ID, settings,
                             routers=[api.router, api.internal_router, bindings],
                             lifespan=lifespan, readiness=[db.ping, vault.ready],
                             description="Target inventory, credentials, host keys, health")
    app.state.settings = settings
    app.state.db = db
    app.state.runtime = runtime
    app.state.publisher = publisher
    app.state.vault = vault
    app.state.sweeper = sweeper
    app.state.authenticator = runtime_authenticator(runtime, settings)
    return app
