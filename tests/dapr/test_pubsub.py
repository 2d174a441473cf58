"""Pub/sub through real sidecars and brokers: publishing scopes, retries, dead letters, and the
CloudEvent envelope surviving the trip. Each test runs on RabbitMQ and on Redis Streams."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_platform.dapr_setup import dapr_dir
from opsconductor_runtime.dapr import DaprRuntime
from opsconductor_runtime.interface import PublishFailed

from .conftest import InProcessApp, MakeRun, sdk_pointed_at

pytestmark = pytest.mark.timeout(300)
BROKERS = ["rabbitmq", "redis"]


def cloud_event(topic: str, source: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": topic,
            "datacontenttype": "application/json", "data": {"user_id": str(uuid.uuid4())},
            "actor": "dapr-tier", "correlationid": f"cid-{uuid.uuid4().hex[:8]}",
            "resourcetype": "user", "resourceid": "r-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


def delivery_attempts() -> int:
    """How often the sidecar hands a failing event to its subscriber before dead-lettering it:
    once, plus the retries of the inbound pub/sub policy in dapr/resiliency.yaml."""
    spec = yaml.safe_load(Path(dapr_dir() / "resiliency.yaml").read_text())["spec"]
    policy = spec["targets"]["components"][PUBSUB]["inbound"]["retry"]
    return 1 + int(spec["policies"]["retries"][policy]["maxRetries"])


class TestPublishingScopes:
    @pytest.mark.parametrize("pubsub", BROKERS)
    async def test_an_app_publishes_only_the_topics_it_owns(self, dapr_run: MakeRun,
                                                            pubsub: str) -> None:
        run = await dapr_run(pubsub)
        gateway = await run.start_sidecar("gateway")
        jobs = await run.start_sidecar("jobs")
        await run.wait_healthy(gateway)
        await run.wait_healthy(jobs)

        with sdk_pointed_at(gateway):
            runtime = DaprRuntime("gateway")
            try:
                await runtime.publish(PUBSUB, topics.USER_ACTIVE,
                                      cloud_event(topics.USER_ACTIVE, "gateway"))
                with pytest.raises(PublishFailed, match="not allowed"):
                    await runtime.publish(PUBSUB, topics.USER_CREATED,
                                          cloud_event(topics.USER_CREATED, "gateway"))
                # Not one of the platform's topics at all.
                with pytest.raises(PublishFailed):
                    await runtime.publish(PUBSUB, "made.up", cloud_event("made.up", "gateway"))
            finally:
                await runtime.close()
        # An app that owns no topic may publish none of the platform's facts.
        with sdk_pointed_at(jobs):
            runtime = DaprRuntime("jobs")
            try:
                with pytest.raises(PublishFailed, match="not allowed"):
                    await runtime.publish(PUBSUB, topics.USER_ACTIVE,
                                          cloud_event(topics.USER_ACTIVE, "jobs"))
            finally:
                await runtime.close()


def probe_app(attempts: Counter[str], dead: list[dict[str, Any]],
              delivered: list[dict[str, Any]]) -> FastAPI:
    """A subscriber as the services write them (dapr-ext-fastapi), under the app-id `audit`
    (the component lets it read every topic): user.created always fails, deadletter records."""
    app = FastAPI()
    dapr = DaprApp(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @dapr.subscribe(pubsub=PUBSUB, topic=topics.USER_CREATED, route="/events/user-created",
                    dead_letter_topic=topics.DEAD_LETTER)
    async def failing(body: dict[str, Any] = Body(...)) -> JSONResponse:
        attempts[body["id"]] += 1
        return JSONResponse({"detail": "database is on fire"}, status_code=500)

    @dapr.subscribe(pubsub=PUBSUB, topic=topics.USER_UPDATED, route="/events/user-updated",
                    dead_letter_topic=topics.DEAD_LETTER)
    async def working(body: dict[str, Any] = Body(...)) -> dict[str, str]:
        delivered.append(body)
        return {"status": "SUCCESS"}

    @dapr.subscribe(pubsub=PUBSUB, topic=topics.DEAD_LETTER, route="/events/dead-letter")
    async def dead_letter(body: dict[str, Any] = Body(...)) -> dict[str, str]:
        dead.append(body)
        return {"status": "SUCCESS"}

    return app


async def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class TestDelivery:
    @pytest.mark.parametrize("pubsub", BROKERS)
    async def test_a_failing_subscriber_is_retried_then_dead_lettered(self, dapr_run: MakeRun,
                                                                      pubsub: str) -> None:
        run = await dapr_run(pubsub)
        attempts: Counter[str] = Counter()
        dead: list[dict[str, Any]] = []
        delivered: list[dict[str, Any]] = []
        async with InProcessApp(probe_app(attempts, dead, delivered)) as probe:
            audit = await run.start_sidecar("audit", app_port=probe.port)
            users = await run.start_sidecar("users")
            await run.wait_healthy(audit, probe.port)
            await run.wait_healthy(users)

            failing = cloud_event(topics.USER_CREATED, "users")
            fine = cloud_event(topics.USER_UPDATED, "users")
            with sdk_pointed_at(users):
                runtime = DaprRuntime("users")
                try:
                    await runtime.publish(PUBSUB, topics.USER_CREATED, failing)
                    await runtime.publish(PUBSUB, topics.USER_UPDATED, fine)
                finally:
                    await runtime.close()

            await wait_for(lambda: any(e["id"] == fine["id"] for e in delivered), 60,
                           "the healthy delivery")
            await wait_for(lambda: any(e["id"] == failing["id"] for e in dead), 180,
                           "the dead letter")
            await asyncio.sleep(2)  # nothing more may arrive for it

        # Retried as the resiliency policy says, then parked once in the dead-letter topic.
        assert attempts[failing["id"]] == delivery_attempts()
        assert [e["id"] for e in dead].count(failing["id"]) == 1
        # The envelope is the one the publisher wrote: id, source, type and extensions.
        parked = next(e for e in dead if e["id"] == failing["id"])
        for key in ("source", "type", "data", "actor", "correlationid", "resourcetype",
                    "resourceid"):
            assert parked[key] == failing[key], key
        good = next(e for e in delivered if e["id"] == fine["id"])
        assert good["correlationid"] == fine["correlationid"]
        assert good["traceparent"].split("-")[1] == fine["traceparent"].split("-")[1]
        # The healthy event was handled once and never dead-lettered.
        assert [e["id"] for e in delivered].count(fine["id"]) == 1
        assert all(e["id"] != fine["id"] for e in dead)
