"""The jobs app: create_app() wires settings, database, runtime, the dangerous-command policy and
routes."""

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
from opsconductor_jobs import api
from opsconductor_jobs.config import APP_ID, Settings, get_settings
from opsconductor_jobs.dangerous import Policy
from opsconductor_jobs.models import outbox
from opsconductor_runtime.factory import runtime_or_default
from opsconductor_runtime.interface import Runtime
from opsconductor_runtime.service import service_lifespan

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # A malformed extra-rules file stops the app here, before it serves anything.
    policy = Policy.from_file(settings.dangerous_rules_file)
    runtime, owns_runtime = runtime_or_default(runtime, APP_ID)
    db = ServiceDatabase(settings.effective_database_url(APP_ID))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(db=db, runtime=runtime, outbox=outbox, pubsub=PUBSUB,
                                    migrations_dir=MIGRATIONS_DIR,
                                    outbox_paused=settings.outbox_paused,
                                    close_runtime=owns_runtime) as relay:
            app.state.relay = relay
            yield

    app = create_service_app(APP_ID, settings, routers=[api.router], lifespan=lifespan,
                             readiness=[db.ping],
                             description="Job definitions, versions, dangerous-command policy, runs")
    app.state.settings = settings
    app.state.db = db
    app.state.runtime = runtime
    app.state.publisher = EventPublisher(APP_ID, outbox)
    app.state.policy = policy
    app.state.authenticator = runtime_authenticator(runtime, settings)
    return app
