"""Events: `user.active` published straight to pub/sub, at most once a minute per user; the
execution.* subscriptions that feed the live-output hub."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.envelope import new_event
from opsconductor_contracts.events import ExecutionOutput, OutputChunkEvent, UserActive
from opsconductor_gateway.activity import UserActivity
from opsconductor_gateway.live import LiveHub, encode
from opsconductor_gateway.main import create_app
from opsconductor_testing.runtime import RecordingRuntime


class TestUserActive:
    async def test_published_once_for_many_requests(self, client, runtime, make_token):
        headers = {"Authorization": f"Bearer {make_token('alice')}",
                   "X-Correlation-ID": "corr-1"}
        for _ in range(5):
            assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200
        assert runtime.topics() == [topics.USER_ACTIVE]
        published = runtime.published[0]
        assert published.pubsub == PUBSUB
        event = published.event
        assert event["type"] == topics.USER_ACTIVE
        assert event["source"] == "gateway"
        assert event["specversion"] == "1.0"
        assert event["actor"] == "alice"
        assert event["resourcetype"] == "user"
        assert event["resourceid"] == "alice"
        assert event["correlationid"] == "corr-1"
        assert UserActive.model_validate(event["data"]).user_id == "alice"

    async def test_each_user_is_reported(self, client, runtime, make_token):
        for user in ("alice", "bob", "alice"):
            await client.get("/api/v1/users/me",
                             headers={"Authorization": f"Bearer {make_token(user)}"})
        assert [p.event["data"]["user_id"] for p in runtime.published] == ["alice", "bob"]

    async def test_not_for_anonymous_or_failed_requests(self, client, runtime, make_token):
        await client.post("/api/v1/auth/login", json={"username": "a", "password": "b"})
        await client.get("/api/v1/users/me")
        await client.get("/api/v1/targets",
                         headers={"Authorization": f"Bearer {make_token('carol')}"})
        assert runtime.published == []

    async def test_a_broker_failure_does_not_fail_the_request(self, client, runtime, auth):
        runtime.fail_publish = True
        response = await client.get("/api/v1/users/me", headers=auth)
        assert response.status_code == 200
        assert runtime.published == []


class TestActivityWindow:
    async def test_again_after_a_minute(self):
        now = [1000.0]
        runtime = RecordingRuntime()
        activity = UserActivity(runtime, clock=lambda: now[0])
        assert activity.due("alice")
        now[0] += 59.9
        assert not activity.due("alice")
        assert activity.due("bob")
        now[0] += 0.2
        assert activity.due("alice")

    async def test_memory_is_bounded(self):
        now = [0.0]
        activity = UserActivity(RecordingRuntime(), max_users=3, clock=lambda: now[0])
        for user in ("a", "b", "c"):
            assert activity.due(user)
        now[0] += 61
        assert activity.due("d")
        assert len(activity._last) == 1


ROUTES = {
    topics.EXECUTION_OUTPUT: "/events/execution-output",
    topics.EXECUTION_STARTED: "/events/execution-started",
    topics.EXECUTION_TARGET_FINISHED: "/events/execution-target-finished",
    topics.EXECUTION_FINISHED: "/events/execution-finished",
}


def chunk(seq: int, text: str) -> OutputChunkEvent:
    return OutputChunkEvent(seq=seq, target_id=str(uuid.uuid4()), stream="stdout", data=text,
                            ts=datetime(2025, 1, 2, tzinfo=UTC))


async def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class TestDeliveryRoutes:
    async def test_public_clients_cannot_inject_events(self, client):
        event = new_event(topics.EXECUTION_OUTPUT,
                          ExecutionOutput(execution_id=str(uuid.uuid4()), chunks=[chunk(1, "x")]),
                          source="evil", actor=None, resource_type="execution", resource_id="x")
        response = await client.post("/events/execution-output", json=event)
        assert response.status_code == 404
        assert (await client.get("/dapr/subscribe")).status_code == 404

    async def test_the_runtime_learns_the_subscriptions(self, make_settings, runtime,
                                                        in_process):
        async with in_process(create_app(runtime, make_settings())) as runtime_client:
            response = await runtime_client.get("/dapr/subscribe")
        assert response.status_code == 200
        assert {(s["topic"], s["route"]) for s in response.json()} == set(ROUTES.items())

    async def test_with_a_delivery_token_only_the_token_opens_them(self, make_settings,
                                                                   runtime, in_process):
        app = create_app(runtime, make_settings(delivery_token="sidecar-token"))
        async with in_process(app) as runtime_client:
            refused = await runtime_client.get("/dapr/subscribe")
            wrong = await runtime_client.get("/dapr/subscribe",
                                             headers={"dapr-api-token": "nope"})
            right = await runtime_client.get("/dapr/subscribe",
                                             headers={"dapr-api-token": "sidecar-token"})
        assert (refused.status_code, wrong.status_code, right.status_code) == (404, 404, 200)

    async def test_a_sidecar_app_token_does_not_lock_out_the_public(self, make_settings,
                                                                    runtime):
        settings = make_settings(app_api_token="sidecar-token")
        transport = httpx.ASGITransport(app=create_app(runtime, settings),
                                        client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/dapr/subscribe")).status_code == 404
            assert (await c.get("/dapr/subscribe",
                                headers={"dapr-api-token": "sidecar-token"})).status_code == 200

    async def test_the_embedded_host_delivers_to_the_hub(self, make_settings, tmp_path):
        from opsconductor_contracts.components import PUBSUB
        from opsconductor_runtime.embedded import EmbeddedHost

        host = EmbeddedHost(tmp_path, max_delivery_attempts=1)
        await host.open()
        try:
            app = create_app(host.runtime_for("gateway"), make_settings())
            host.register("gateway", app)
            await host.start_delivery()
            execution_id = str(uuid.uuid4())
            watcher = app.state.live_hub.subscribe(execution_id)
            event = new_event(topics.EXECUTION_OUTPUT,
                              ExecutionOutput(execution_id=execution_id,
                                              chunks=[chunk(1, "a"), chunk(2, "b")]),
                              source="executor", actor=None, resource_type="execution",
                              resource_id=execution_id)
            await host.runtime_for("executor").publish(PUBSUB, topics.EXECUTION_OUTPUT, event)
            await wait_for(lambda: len(watcher.pending) == 2)
            assert [m.seq for m in watcher.pending] == [1, 2]
        finally:
            await host.close()

    async def test_a_malformed_event_is_dropped(self, make_settings, runtime, in_process):
        async with in_process(create_app(runtime, make_settings())) as runtime_client:
            response = await runtime_client.post(
                "/events/execution-output",
                json={"id": "1", "data": {"execution_id": "x", "chunks": [{"seq": "one"}]}})
        assert response.json() == {"status": "DROP"}


class TestHub:
    def messages(self, *seq_numbers: int) -> list[Any]:
        return [encode(n, "output", {"n": n}) for n in seq_numbers]

    def test_each_stream_of_the_execution_gets_the_messages(self):
        hub = LiveHub(queue_size=10)
        a, b = hub.subscribe("e1"), hub.subscribe("e1")
        other = hub.subscribe("e2")
        assert hub.publish("e1", self.messages(1, 2)) == 2
        assert [m.seq for m in a.take()[0]] == [1, 2]
        assert [m.seq for m in b.take()[0]] == [1, 2]
        assert other.take() == ([], False)
        assert hub.publish("nobody-watches", self.messages(1)) == 0

    def test_a_full_backlog_is_dropped_and_marked_never_waited_on(self):
        hub = LiveHub(queue_size=3)
        slow, fast = hub.subscribe("e1"), hub.subscribe("e1")
        hub.publish("e1", self.messages(1, 2))
        assert [m.seq for m in fast.take()[0]] == [1, 2]
        hub.publish("e1", self.messages(3, 4))  # slow now holds 4 > 3
        hub.publish("e1", self.messages(5))
        assert slow.take() == ([], True)
        assert [m.seq for m in fast.take()[0]] == [3, 4, 5]
        hub.publish("e1", self.messages(6))
        assert [m.seq for m in slow.take()[0]] == [6]

    def test_closed_streams_are_forgotten(self):
        hub = LiveHub(queue_size=3)
        a = hub.subscribe("e1")
        hub.unsubscribe(a)
        hub.unsubscribe(a)
        assert not hub.watching("e1")
        assert hub.connections == 0
