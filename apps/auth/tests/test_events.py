"""Subscriptions (user.updated, user.deleted) and the housekeeping binding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from opsconductor_auth.models import ApiToken, RefreshToken
from opsconductor_contracts import topics
from opsconductor_contracts.components import JWT_SIGNING_KEY_SECRET
from opsconductor_contracts.envelope import new_event
from opsconductor_contracts.events import UserDeleted, UserUpdated
from opsconductor_core.tokens import generate_private_pem, key_id


def user_updated(user, **changes: Any) -> dict[str, Any]:
    data = UserUpdated(user_id=user.id, username=user.username,
                       changed=changes.pop("changed", ["roles"]), **changes)
    return new_event(topics.USER_UPDATED, data, source="users", actor="admin-id",
                     resource_type="user", resource_id=user.id)


def user_deleted(user) -> dict[str, Any]:
    return new_event(topics.USER_DELETED, UserDeleted(user_id=user.id, username=user.username),
                     source="users", actor="admin-id", resource_type="user", resource_id=user.id)


async def sessions_of(auth, username: str, count: int) -> list[dict[str, Any]]:
    return [await auth.tokens(username) for _ in range(count)]


async def refresh_status(auth, tokens: dict[str, Any]) -> int:
    response = await auth.client.post("/auth/refresh",
                                      json={"refresh_token": tokens["refresh_token"]})
    return response.status_code


class TestSubscriptions:
    async def test_registered_with_dead_letter_topic(self, auth):
        subscriptions = (await auth.client.get("/dapr/subscribe")).json()
        by_topic = {s["topic"]: s for s in subscriptions}
        assert set(by_topic) == {topics.USER_UPDATED, topics.USER_DELETED}
        assert all(s["deadLetterTopic"] == topics.DEAD_LETTER for s in subscriptions)
        assert all(s["pubsubname"] == "pubsub" for s in subscriptions)


class TestUserUpdated:
    async def test_sessions_revoked_ends_every_session_of_that_user(self, auth):
        alice = auth.users.add("alice")
        auth.users.add("bob")
        alice_sessions = await sessions_of(auth, "alice", 2)
        bob = await auth.tokens("bob")

        response = await auth.client.post("/events/user-updated",
                                          json=user_updated(alice, sessions_revoked=True,
                                                            active=True, changed=["password"]))

        assert response.status_code == 200
        for tokens in alice_sessions:
            assert await refresh_status(auth, tokens) == 401
            assert await auth.protected(tokens["access_token"]) == 401
        assert await auth.protected(bob["access_token"]) == 200
        assert await refresh_status(auth, bob) == 200
        events = [e for e in await auth.drained() if e["type"] == topics.SESSION_REVOKED]
        assert len(events) == 2
        assert {e["data"]["reason"] for e in events} == {"sessions_revoked"}
        assert all(e["actor"] == "admin-id" for e in events)

    async def test_disabled_user_loses_sessions(self, auth):
        alice = auth.users.add("alice")
        tokens = await auth.tokens("alice")

        await auth.client.post("/events/user-updated",
                               json=user_updated(alice, active=False, changed=["active"]))

        assert await refresh_status(auth, tokens) == 401
        assert await auth.protected(tokens["access_token"]) == 401

    async def test_a_harmless_update_changes_nothing(self, auth):
        alice = auth.users.add("alice")
        tokens = await auth.tokens("alice")

        response = await auth.client.post("/events/user-updated",
                                          json=user_updated(alice, active=True,
                                                            changed=["email"]))

        assert response.status_code == 200
        assert await auth.protected(tokens["access_token"]) == 200
        assert await refresh_status(auth, tokens) == 200

    async def test_redelivery_is_handled_once(self, auth):
        alice = auth.users.add("alice")
        await auth.tokens("alice")
        event = user_updated(alice, sessions_revoked=True, active=True)

        await auth.client.post("/events/user-updated", json=event)
        await auth.drained()
        # A new login between deliveries must survive the duplicate.
        later = await auth.tokens("alice")
        again = await auth.client.post("/events/user-updated", json=event)

        assert again.status_code == 200
        assert await refresh_status(auth, later) == 200
        revoked = [e for e in await auth.drained() if e["type"] == topics.SESSION_REVOKED]
        assert len(revoked) == 1

    async def test_malformed_event_is_dropped_not_retried(self, auth):
        alice = auth.users.add("alice")
        tokens = await auth.tokens("alice")
        event = user_updated(alice, sessions_revoked=True, active=True)
        del event["data"]["user_id"]

        response = await auth.client.post("/events/user-updated", json=event)

        assert response.status_code == 200
        assert response.json() == {"status": "DROP"}
        assert await auth.protected(tokens["access_token"]) == 200


class TestUserDeleted:
    async def test_sessions_and_api_tokens_go(self, auth):
        alice = auth.users.add("alice")
        auth.users.add("bob")
        tokens = await auth.tokens("alice")
        created = await auth.client.post("/auth/api-tokens",
                                         json={"name": "ci", "expires_in_days": 5},
                                         headers=auth.bearer(tokens["access_token"]))
        auth.remember(created)
        bob = await auth.tokens("bob")
        bobs_token = await auth.client.post("/auth/api-tokens",
                                            json={"name": "ci", "expires_in_days": 5},
                                            headers=auth.bearer(bob["access_token"]))

        response = await auth.client.post("/events/user-deleted", json=user_deleted(alice))

        assert response.status_code == 200
        assert await refresh_status(auth, tokens) == 401
        assert await auth.protected(tokens["access_token"]) == 401
        introspected = await auth.client.post("/internal/api-tokens/introspect",
                                              json={"token": created.json()["token"]})
        assert introspected.json() == {"active": False}
        async with auth.app.state.db.sessions() as session:
            owners = (await session.scalars(select(ApiToken.user_id))).all()
        assert owners == [auth.decode(bob["access_token"])[1]["sub"]]
        assert await auth.protected(bobs_token.json()["token"]) == 200
        events = await auth.drained()
        assert [e["data"]["token_id"] for e in events if e["type"] == topics.API_TOKEN_REVOKED] \
            == [created.json()["id"]]


class TestHousekeeping:
    async def test_purges_expired_tokens_and_keeps_live_ones(self, auth):
        auth.users.add("alice")
        old = await auth.tokens("alice")
        live = await auth.tokens("alice")
        for name in ("old", "live"):
            await auth.client.post("/auth/api-tokens",
                                   json={"name": name, "expires_in_days": 5},
                                   headers=auth.bearer(live["access_token"]))
        past = datetime.now(UTC) - timedelta(minutes=1)
        old_sub = select(RefreshToken.id).limit(1).order_by(RefreshToken.created_at)
        await auth.execute(update(RefreshToken).where(RefreshToken.id.in_(old_sub))
                           .values(expires_at=past))
        await auth.execute(update(ApiToken).where(ApiToken.name == "old").values(expires_at=past))

        response = await auth.client.post("/housekeeping", json={})

        assert response.status_code == 200
        assert response.json()["refresh_tokens_purged"] == 1
        assert response.json()["api_tokens_purged"] == 1
        async with auth.app.state.db.sessions() as session:
            refresh_left = await session.scalar(select(func.count()).select_from(RefreshToken))
            api_left = (await session.scalars(select(ApiToken.name))).all()
        assert refresh_left == 1
        assert api_left == ["live"]
        assert await refresh_status(auth, old) == 401
        assert await refresh_status(auth, live) == 200

    async def test_rereads_the_signing_key(self, make_auth):
        auth = await make_auth(key_reload_s=3600)
        auth.users.add("alice")
        new_pem = generate_private_pem()
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = new_pem

        await auth.client.post("/housekeeping", json={})
        tokens = await auth.tokens("alice")

        assert auth.decode(tokens["access_token"])[0]["kid"] == key_id(new_pem)

    async def test_answers_the_sidecar_probe(self, auth):
        response = await auth.client.options("/housekeeping")
        assert response.status_code == 200
