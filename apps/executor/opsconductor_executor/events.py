"""Subscriptions: `execution.requested` makes some replica claim the new execution.

The create request's replica usually claimed it already (fast path); then this finds it taken
and does nothing. Delivered twice, the second delivery is recognised by its event id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from dapr.ext.fastapi import DaprApp
from fastapi import FastAPI, Request
from pydantic import ValidationError

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.envelope import CloudEvent
from opsconductor_contracts.events import ExecutionRequested
from opsconductor_db.database import ServiceDatabase
from opsconductor_executor.models import processed_events
from opsconductor_executor.runner import Runner
from opsconductor_runtime.outbox import first_delivery

log = logging.getLogger("opsconductor.executor.events")

SUCCESS = {"status": "SUCCESS"}
# A malformed event never gets better: dropped instead of retried.
DROP = {"status": "DROP"}


async def on_execution_requested(db: ServiceDatabase, runner: Runner,
                                 body: Any) -> dict[str, str]:
    try:
        event = CloudEvent.model_validate(body)
        data = ExecutionRequested.model_validate(event.data)
        execution_id = uuid.UUID(data.execution_id)
    except (ValidationError, ValueError):
        log.warning("malformed execution.requested dropped")
        return DROP
    if runner.holds(execution_id):
        # The fast path claimed it here: nothing to do, and no write transaction to queue behind
        # the run's own (the claim is what makes a second delivery harmless).
        return SUCCESS
    async with db.transaction() as session:
        if not await first_delivery(session, processed_events, event.id,
                                    topics.EXECUTION_REQUESTED):
            log.info("duplicate execution.requested skipped", extra={"event_id": event.id})
            return SUCCESS
    # Taken already, finished, or no room here: fine, the sweep of some replica gets it.
    await runner.claim_and_run(execution_id)
    return SUCCESS


def register_subscriptions(app: FastAPI) -> None:
    dapr = DaprApp(app)

    @dapr.subscribe(pubsub=PUBSUB, topic=topics.EXECUTION_REQUESTED,
                    route="/events/execution-requested", dead_letter_topic=topics.DEAD_LETTER)
    async def execution_requested(request: Request) -> dict[str, str]:
        state = request.app.state
        return await on_execution_requested(state.db, state.runner, await request.json())
