"""Subscriptions: logins and activity reported by other services update a user's activity."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

import opsconductor_contracts.topics as topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.envelope import CloudEvent
from opsconductor_contracts.events import LoginSucceeded, UserActive
from opsconductor_db.database import ServiceDatabase
from opsconductor_runtime.outbox import first_delivery
from opsconductor_users.access import parse_id
from opsconductor_users.models import processed_events
from opsconductor_users.repository import UserRepository

log = logging.getLogger("opsconductor.users.events")

SUCCESS = {"status": "SUCCESS"}
# Dapr drops the message instead of retrying it: a malformed event never gets better.
DROP = {"status": "DROP"}


def _aware(at: datetime) -> datetime:
    # A producer that forgot the zone still means UTC (every service works in UTC).
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _record_login(session: AsyncSession, data: LoginSucceeded) -> None:
    user_id = parse_id(data.user_id)
    if user_id is None or not await UserRepository(session).record_login(user_id, _aware(data.at)):
        log.info("login event for an unknown user ignored")


async def _record_action(session: AsyncSession, data: UserActive) -> None:
    user_id = parse_id(data.user_id)
    if user_id is None or not await UserRepository(session).record_action(user_id, _aware(data.at)):
        log.info("activity event for an unknown user ignored")


async def handle_event(db: ServiceDatabase, topic: str, body: dict[str, Any],
                       payload_type: type[BaseModel],
                       effect: Callable[[AsyncSession, Any], Awaitable[None]]) -> dict[str, str]:
    """One transaction: remember the event id and apply the effect, or neither."""
    try:
        event = CloudEvent.model_validate(body)
        data = payload_type.model_validate(event.data)
    except ValidationError:
        log.warning("malformed event dropped", extra={"topic": topic})
        return DROP
    async with db.transaction() as session:
        if not await first_delivery(session, processed_events, event.id, topic):
            log.info("duplicate event skipped", extra={"topic": topic, "event_id": event.id})
            return SUCCESS
        await effect(session, data)
    return SUCCESS


def register_subscriptions(app: FastAPI) -> None:
    dapr = DaprApp(app)

    async def on_login_succeeded(request: Request,
                                 body: dict[str, Any] = Body(...)) -> dict[str, str]:
        return await handle_event(request.app.state.db, topics.LOGIN_SUCCEEDED, body,
                                  LoginSucceeded, _record_login)

    async def on_user_active(request: Request,
                             body: dict[str, Any] = Body(...)) -> dict[str, str]:
        return await handle_event(request.app.state.db, topics.USER_ACTIVE, body, UserActive,
                                  _record_action)

    dapr.subscribe(pubsub=PUBSUB, topic=topics.LOGIN_SUCCEEDED, route="/events/login-succeeded",
                   dead_letter_topic=topics.DEAD_LETTER)(on_login_succeeded)
    dapr.subscribe(pubsub=PUBSUB, topic=topics.USER_ACTIVE, route="/events/user-active",
                   dead_letter_topic=topics.DEAD_LETTER)(on_user_active)
