"""The users app: create_app() wires settings, database, runtime, routes and subscriptions."""

from __future__ import annotations

import asyncio
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
from opsconductor_users import api
from opsconductor_users.config import APP_ID, Settings, get_settings
from opsconductor_users.events import register_subscriptions
from opsconductor_users.models import outbox
from opsconductor_users.passwords import Passwords
from opsconductor_users.service import ADMIN_PASSWORD_FILE, ADMIN_USERNAME, bootstrap_admin

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime, owns_runtime = runtime_or_default(runtime, APP_ID)
    db = ServiceDatabase(settings.effective_database_url(APP_ID))
    passwords = Passwords(time_cost=settings.argon2_time_cost,
                          memory_cost=settings.argon2_memory_cost,
                          parallelism=settings.argon2_parallelism)
    publisher = EventPublisher(APP_ID, outbox)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(db=db, runtime=runtime, outbox=outbox, pubsub=PUBSUB,
                                    migrations_dir=MIGRATIONS_DIR,
                                    outbox_paused=settings.outbox_paused,
                                    close_runtime=owns_runtime) as relay:
            app.state.relay = relay
            await asyncio.to_thread(passwords.warm)
            generated = await bootstrap_admin(db, publisher, password=settings.admin_password,
                                              data_dir=settings.data_dir, passwords=passwords)
            if generated is not None:
                # Shown once, on purpose on stdout and not in the logs.
                path = settings.data_dir / ADMIN_PASSWORD_FILE
                print(f"OpsConductor first start: user '{ADMIN_USERNAME}' has password "
                      f"{generated} (also saved to {path.resolve()})", flush=True)
            yield

    app = create_service_app(APP_ID, settings, routers=[api.router, api.internal_router],
                             lifespan=lifespan, readiness=[db.ping],
                             description="Users, roles, permissions and activity")
    app.state.settings = settings
    app.state.db = db
    app.state.runtime = runtime
    app.state.passwords = passwords
    app.state.publisher = publisher
    app.state.authenticator = runtime_authenticator(runtime, settings)
    register_subscriptions(app)
    return app
