"""The executor app: create_app() wires settings, database, runtime, the runner and its loops."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from opsconductor_connectors import SshPool, SshTimeouts
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_contracts.security import runtime_authenticator
from opsconductor_core.app import create_service_app
from opsconductor_db.database import ServiceDatabase
from opsconductor_executor import api
from opsconductor_executor.config import APP_ID, Settings, get_settings
from opsconductor_executor.engine import Engine, EngineSettings
from opsconductor_executor.events import register_subscriptions
from opsconductor_executor.leases import Replica
from opsconductor_executor.models import outbox
from opsconductor_executor.runner import Runner
from opsconductor_executor.sealing import SecretBox, SecretsUnavailable
from opsconductor_runtime.factory import runtime_or_default
from opsconductor_runtime.interface import Runtime
from opsconductor_runtime.service import service_lifespan

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def build_engine(settings: Settings) -> Engine:
    """The engine and the SSH pool every execution of this replica shares."""
    timeouts = SshTimeouts(connect_s=settings.connect_timeout_s,
                           auth_s=settings.connect_timeout_s)
    pool = SshPool(max_per_host=settings.ssh_max_per_host,
                   max_channels_per_connection=settings.ssh_channels_per_connection,
                   idle_timeout_s=settings.ssh_idle_timeout_s, timeouts=timeouts,
                   reuse_shells=settings.ssh_reuse_shells)
    return Engine(ssh_pool=pool, settings=EngineSettings(
        output_cap_bytes=settings.output_cap_bytes,
        flush_interval_s=settings.output_flush_interval_s,
        flush_bytes=settings.output_flush_bytes,
        output_buffer_bytes=settings.output_buffer_bytes,
        default_step_timeout_s=settings.default_step_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        cancel_grace_s=settings.cancel_grace_s,
        winrm_operation_timeout_s=settings.winrm_operation_timeout_s,
        allow_insecure_winrm_http=settings.allow_insecure_winrm_http))


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime, owns_runtime = runtime_or_default(runtime, APP_ID)
    db = ServiceDatabase(settings.effective_database_url(APP_ID))
    publisher = EventPublisher(APP_ID, outbox)
    box = SecretBox(runtime)
    runner = Runner(db=db, runtime=runtime, settings=settings, box=box,
                    engine_factory=lambda: build_engine(settings))
    replica = Replica(runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(db=db, runtime=runtime, outbox=outbox, pubsub=PUBSUB,
                                    migrations_dir=MIGRATIONS_DIR,
                                    outbox_paused=settings.outbox_paused,
                                    close_runtime=owns_runtime) as relay:
            app.state.relay = relay
            # Read the secret-values key once now, not first inside a claim's transaction; a
            # missing key only matters to runs with secret values (they fail with a reason).
            with contextlib.suppress(SecretsUnavailable):
                await box.key()
            replica.start()
            try:
                yield
            finally:
                # A clean stop hands running executions over at once (see Runner.stop).
                await replica.stop(release=True)

    app = create_service_app(APP_ID, settings, routers=[api.router, api.internal_router],
                             lifespan=lifespan, readiness=[db.ping],
                             description="Executions: fan-out, live output, cancel, retries, "
                                         "crash recovery")
    register_subscriptions(app)
    app.state.settings = settings
    app.state.db = db
    app.state.runtime = runtime
    app.state.publisher = publisher
    app.state.box = box
    app.state.runner = runner
    app.state.replica = replica
    app.state.authenticator = runtime_authenticator(runtime, settings)
    return app
