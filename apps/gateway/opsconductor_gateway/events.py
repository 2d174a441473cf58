"""Subscriptions: execution events feed the live-output hub (no database: SSE dedups by seq).

Handlers only hand messages to in-memory queues, so they answer at once whatever the readers
do. The gateway is the public edge: EdgePolicyMiddleware lets only the runtime reach these
routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dapr.ext.fastapi import DaprApp
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_gateway.live import LiveHub, MalformedEvent, StreamMessage, output_messages
from opsconductor_gateway.live import status_messages as status
from opsconductor_gateway.sse import canonical_id

log = logging.getLogger("opsconductor.gateway.events")

SUCCESS = {"status": "SUCCESS"}
# Dapr drops the message instead of retrying it: a malformed event never gets better.
DROP = {"status": "DROP"}

Translate = Callable[[Any], tuple[str, list[StreamMessage]]]

SUBSCRIPTIONS: tuple[tuple[str, str, Translate], ...] = (
    (topics.EXECUTION_OUTPUT, "/events/execution-output", output_messages),
    (topics.EXECUTION_STARTED, "/events/execution-started", status("started")),
    (topics.EXECUTION_TARGET_FINISHED, "/events/execution-target-finished",
     status("target_finished")),
    (topics.EXECUTION_FINISHED, "/events/execution-finished", status("finished")),
)


def deliver(hub: LiveHub, topic: str, body: Any, translate: Translate) -> dict[str, str]:
    data = body.get("data") if isinstance(body, dict) else None
    try:
        execution_id, messages = translate(data)
    except MalformedEvent as exc:
        log.warning("malformed event dropped", extra={"topic": topic, "error": str(exc)})
        return DROP
    hub.publish(canonical_id(execution_id) or execution_id, messages)
    return SUCCESS


def register_subscriptions(app: FastAPI, hub: LiveHub) -> None:
    dapr = DaprApp(app)

    def handler(topic: str, translate: Translate) -> Callable[[Request], Any]:
        async def on_event(request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse(DROP)
            return JSONResponse(deliver(hub, topic, body, translate))

        return on_event

    for topic, route, translate in SUBSCRIPTIONS:
        dapr.subscribe(pubsub=PUBSUB, topic=topic, route=route,
                       dead_letter_topic=topics.DEAD_LETTER)(handler(topic, translate))
