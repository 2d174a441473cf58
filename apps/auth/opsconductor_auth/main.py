"""The auth app: `create_app()` wires settings, database, runtime, keys and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from opsconductor_auth.api import internal, router
from opsconductor_auth.api_tokens import ApiTokenService
from opsconductor_auth.config import Settings, get_settings
from opsconductor_auth.events import housekeeping, subscribe
from opsconductor_auth.keys import KeyManager
from opsconductor_auth.models import outbox
from opsconductor_auth.ratelimit import RateLimiter
from opsconductor_auth.schemas import Introspection
from opsconductor_auth.service import SessionService
from opsconductor_contracts.clients.users import UsersClient
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_contracts.security import runtime_authenticator
from opsconductor_core.app import create_service_app
from opsconductor_core.security import Principal
from opsconductor_db.database import ServiceDatabase
from opsconductor_runtime.factory import runtime_or_default
from opsconductor_runtime.interface import Runtime
from opsconductor_runtime.service import service_lifespan

APP_ID = "auth"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _principal(result: Introspection) -> Principal | None:
    if not result.active or result.user_id is None or result.token_id is None:
        return None
    return Principal(subject=result.user_id, username=result.username or "",
                     permissions=frozenset(result.permissions or ()),
                     roles=tuple(result.roles or ()), token_id=result.token_id,
                     kind="api_token", expires_at=result.expires_at)


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime, owns_runtime = runtime_or_default(runtime, APP_ID)
    db = ServiceDatabase(settings.effective_database_url(APP_ID))
    keys = KeyManager(runtime, db, settings)
    users = UsersClient(runtime)
    publisher = EventPublisher(APP_ID, outbox)
    sessions = SessionService(db=db, runtime=runtime, settings=settings, keys=keys, users=users,
                              publisher=publisher, limiter=RateLimiter(runtime))

    async def introspect_locally(token: str) -> Principal | None:
        async with db.transaction() as session:
            result = await ApiTokenService(session, users=users, publisher=publisher,
                                           settings=settings).introspect(token)
        return _principal(result)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(db=db, runtime=runtime, outbox=outbox, pubsub=PUBSUB,
                                    migrations_dir=MIGRATIONS_DIR,
                                    outbox_paused=settings.outbox_paused,
                                    close_runtime=owns_runtime) as relay:
            app.state.outbox_relay = relay
            # Not fatal when missing: readiness says so and login answers 503 until it appears.
            await keys.reload()
            yield

    app = create_service_app(APP_ID, settings, routers=[router, internal, housekeeping],
                             lifespan=lifespan, readiness=[db.ping, keys.ready],
                             description="Login, tokens, JWKS, revocation and API tokens")
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.db = db
    app.state.keys = keys
    app.state.users = users
    app.state.publisher = publisher
    app.state.sessions = sessions
    # Auth answers its own JWKS and introspection locally instead of invoking itself.
    app.state.authenticator = runtime_authenticator(
        runtime, settings, fetch_jwks=keys.jwks, introspect_api_token=introspect_locally,
        refresh_floor_s=0.0)
    subscribe(app)
    return app
