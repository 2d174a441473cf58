"""Subscriptions and the housekeeping binding: translate a delivery into a service call."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from dapr.ext.fastapi import DaprApp
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ValidationError

from opsconductor_auth.api_tokens import ApiTokenService
from opsconductor_auth.models import processed_events
from opsconductor_auth.service import SessionService
from opsconductor_contracts import topics
from opsconductor_contracts.components import HOUSEKEEPING_BINDING, PUBSUB
from opsconductor_contracts.envelope import CloudEvent
from opsconductor_contracts.events import UserDeleted, UserUpdated
from opsconductor_db.database import ServiceDatabase
from opsconductor_runtime.outbox import first_delivery

log = logging.getLogger("opsconductor.auth.events")

SUCCESS = {"status": "SUCCESS"}
# Malformed deliveries will never succeed: drop them instead of retrying forever.
DROP = {"status": "DROP"}

housekeeping = APIRouter(include_in_schema=False)

PayloadT = TypeVar("PayloadT", bound=BaseModel)


def _parse(body: Any, payload: type[PayloadT]) -> tuple[CloudEvent, PayloadT] | None:
    try:
        event = CloudEvent.model_validate(body)
        return event, payload.model_validate(event.data)
    except ValidationError as exc:
        log.warning("undeliverable event dropped", extra={"errors": exc.error_count()})
        return None


def subscribe(app: FastAPI) -> None:
    dapr = DaprApp(app)

    @dapr.subscribe(pubsub=PUBSUB, topic=topics.USER_UPDATED, route="/events/user-updated",
                    dead_letter_topic=topics.DEAD_LETTER)
    async def on_user_updated(request: Request) -> dict[str, str]:
        parsed = _parse(await request.json(), UserUpdated)
        if parsed is None:
            return DROP
        event, data = parsed
        if not (data.sessions_revoked or not data.active):
            return SUCCESS
        state = request.app.state
        db: ServiceDatabase = state.db
        sessions: SessionService = state.sessions
        async with db.transaction() as session:
            if await first_delivery(session, processed_events, event.id, topics.USER_UPDATED):
                reason = "user_disabled" if not data.active else "sessions_revoked"
                await sessions.revoke_user_sessions(session, data.user_id, reason,
                                                    actor=event.actor)
        return SUCCESS

    @dapr.subscribe(pubsub=PUBSUB, topic=topics.USER_DELETED, route="/events/user-deleted",
                    dead_letter_topic=topics.DEAD_LETTER)
    async def on_user_deleted(request: Request) -> dict[str, str]:
        parsed = _parse(await request.json(), UserDeleted)
        if parsed is None:
            return DROP
        event, data = parsed
        state = request.app.state
        db: ServiceDatabase = state.db
        sessions: SessionService = state.sessions
        async with db.transaction() as session:
            if await first_delivery(session, processed_events, event.id, topics.USER_DELETED):
                await sessions.revoke_user_sessions(session, data.user_id, "user_deleted",
                                                    actor=event.actor)
                tokens = ApiTokenService(session, users=state.users, publisher=state.publisher,
                                         settings=state.settings)
                await tokens.delete_all_of(data.user_id, actor=event.actor)
        return SUCCESS


@housekeeping.options(f"/{HOUSEKEEPING_BINDING}")
async def housekeeping_probe() -> dict[str, str]:
    """The sidecar asks whether the app listens to the binding before it starts delivering."""
    return SUCCESS


@housekeeping.post(f"/{HOUSEKEEPING_BINDING}")
async def housekeeping_tick(request: Request) -> dict[str, Any]:
    """Cron tick: re-read the signing key, purge expired refresh and API tokens."""
    state = request.app.state
    await state.keys.reload()
    db: ServiceDatabase = state.db
    async with db.transaction() as session:
        refresh = await state.sessions.purge_expired(session)
        api = await ApiTokenService(session, users=state.users, publisher=state.publisher,
                                    settings=state.settings).purge_expired()
    log.info("housekeeping done", extra={"refresh_tokens_purged": refresh,
                                         "api_tokens_purged": api, "kid": state.keys.kid})
    return {"status": "SUCCESS", "refresh_tokens_purged": refresh, "api_tokens_purged": api}
