"""`user.active`: published straight to pub/sub, at most once a minute per user."""

from __future__ import annotations

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB
from opsconductor_contracts.events import UserActive
from opsconductor_gateway.activity import UserActivity
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
