"""The subscriber of the publish-to-delivery benchmark: declares one programmatic subscription
and notes when each event arrives. Runs behind its own daprd (`uvicorn _dapr_bench_subscriber:app`)
or inside the embedded host (`make_app()` registered in-process).

GET /results -> [[seq, published_ns, received_ns], ...] of every delivery so far.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PUBSUB = os.environ.get("BENCH_PUBSUB", "pubsub")
TOPIC = os.environ.get("BENCH_TOPIC", "bench")


def make_app() -> Starlette:
    received: list[list[Any]] = []

    async def subscribe(_: Request) -> JSONResponse:
        return JSONResponse([{"pubsubname": PUBSUB, "topic": TOPIC, "route": "/events/bench"}])

    async def event(request: Request) -> JSONResponse:
        now = time.time_ns()  # first thing: the body's parsing is the app's cost, not transport
        body = json.loads(await request.body())
        data = body.get("data", body)
        if isinstance(data, str):  # a CloudEvent whose data came as a JSON string
            data = json.loads(data)
        received.append([data["seq"], data["published_ns"], now])
        return JSONResponse({"status": "SUCCESS"})

    async def results(_: Request) -> JSONResponse:
        return JSONResponse(received)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/dapr/subscribe", subscribe, methods=["GET"]),
        Route("/events/bench", event, methods=["POST"]),
        Route("/results", results, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


app = make_app()
