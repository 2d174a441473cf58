"""Subscriptions: logins and activity, delivered at least once, counted exactly once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opsconductor_contracts import topics
from opsconductor_contracts.envelope import new_event
from opsconductor_contracts.events import LoginSucceeded, UserActive

if TYPE_CHECKING:
    from conftest import World

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def login_event(user: dict[str, Any], at: datetime) -> dict[str, Any]:
    payload = LoginSucceeded(user_id=user["id"], username=user["username"], at=at,
                             client_address="192.0.2.7")
    return new_event(topics.LOGIN_SUCCEEDED, payload, source="auth", actor=user["id"],
                     resource_type="user", resource_id=user["id"])


def active_event(user: dict[str, Any], at: datetime) -> dict[str, Any]:
    return new_event(topics.USER_ACTIVE, UserActive(user_id=user["id"], at=at), source="gateway",
                     actor=user["id"], resource_type="user", resource_id=user["id"])


class TestSubscriptions:
    async def test_dapr_sees_both_subscriptions(self, world: World) -> None:
        response = await world.client.get("/dapr/subscribe")
        subs = {s["topic"]: s for s in response.json()}
        assert subs[topics.LOGIN_SUCCEEDED]["route"] == "/events/login-succeeded"
        assert subs[topics.USER_ACTIVE]["route"] == "/events/user-active"
        assert all(s["deadLetterTopic"] == topics.DEAD_LETTER for s in subs.values())


class TestLoginSucceeded:
    async def test_a_duplicate_delivery_counts_once(self, world: World) -> None:
        user = await world.user("olga", ["operator"])
        event = login_event(user, T0)
        for _ in range(3):
            response = await world.client.post("/events/login-succeeded", json=event)
            assert response.status_code == 200
        row = await world.user_row(user["id"])
        assert row is not None
        assert row.login_count == 1
        assert row.last_login_at == T0
        me = await world.client.get("/users/me", headers=world.auth(user))
        assert me.json()["last_login_at"] == "2030-01-02T03:04:05Z"

    async def test_each_login_counts_and_late_arrivals_do_not_go_back(
            self, world: World) -> None:
        user = await world.user("olga", ["operator"])
        for at in (T0, T0 + timedelta(hours=1), T0 - timedelta(days=1)):
            response = await world.client.post("/events/login-succeeded",
                                               json=login_event(user, at))
            assert response.status_code == 200
        row = await world.user_row(user["id"])
        assert row is not None
        assert row.login_count == 3
        assert row.last_login_at == T0 + timedelta(hours=1)

    async def test_unknown_user_is_acknowledged(self, world: World) -> None:
        ghost = {"id": str(uuid.uuid4()), "username": "ghost"}
        response = await world.client.post("/events/login-succeeded",
                                           json=login_event(ghost, T0))
        assert response.status_code == 200
        assert response.json() == {"status": "SUCCESS"}

    async def test_malformed_event_is_dropped_not_retried(self, world: World) -> None:
        user = await world.user("olga", ["operator"])
        event = login_event(user, T0)
        event["data"] = {"user_id": user["id"]}  # no time
        response = await world.client.post("/events/login-succeeded", json=event)
        assert response.status_code == 200
        assert response.json() == {"status": "DROP"}
        row = await world.user_row(user["id"])
        assert row is not None and row.login_count == 0


class TestUserActive:
    async def test_last_action_moves_forward_only(self, world: World) -> None:
        user = await world.user("olga", ["operator"])
        later = T0 + timedelta(minutes=5)
        for event in (active_event(user, later), active_event(user, T0)):
            response = await world.client.post("/events/user-active", json=event)
            assert response.status_code == 200
        row = await world.user_row(user["id"])
        assert row is not None
        assert row.last_action_at == later
        assert row.login_count == 0

    async def test_activity_publishes_nothing(self, world: World) -> None:
        user = await world.user("olga", ["operator"])
        await world.drain()
        await world.client.post("/events/user-active", json=active_event(user, T0))
        assert await world.topics() == []
