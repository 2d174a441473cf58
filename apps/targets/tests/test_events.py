"""What the targets service announces: CloudEvents through the outbox, never a secret."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsconductor_contracts import topics
from opsconductor_contracts.events import (
    CredentialChanged,
    HostKeyPinned,
    TargetCreated,
    TargetDeleted,
    TargetUpdated,
)

if TYPE_CHECKING:
    from conftest import World

PASSWORD = "Event-Secret-Password-31337"
PAYLOADS = {topics.TARGET_CREATED: TargetCreated, topics.TARGET_UPDATED: TargetUpdated,
            topics.TARGET_DELETED: TargetDeleted, topics.CREDENTIAL_CHANGED: CredentialChanged,
            topics.HOST_KEY_PINNED: HostKeyPinned}


class TestEvents:
    async def test_a_target_life_in_events(self, world: World) -> None:
        headers = {**world.auth(), "X-Correlation-ID": "corr-targets-1"}
        created = await world.client.post("/targets", headers=headers, json={
            "name": "web1", "host": "10.0.0.1", "username": "deploy",
            "credential": {"type": "password", "password": PASSWORD}})
        target_id = created.json()["id"]
        await world.client.patch(f"/targets/{target_id}", headers=headers,
                                 json={"host_key": "SHA256:" + "p" * 43})
        await world.client.put(f"/targets/{target_id}/credential", headers=headers,
                               json={"type": "password", "password": PASSWORD + "2"})
        await world.client.delete(f"/targets/{target_id}", headers=headers)

        events = await world.events()
        assert [e["type"] for e in events] == [
            "target.created", "credential.changed", "target.updated", "host_key.pinned",
            "credential.changed", "target.deleted"]
        for event in events:
            assert event["specversion"] == "1.0"
            assert event["source"] == "targets"
            assert event["actor"] == world.user_id
            assert event["correlationid"] == "corr-targets-1"
            assert (event["resourcetype"], event["resourceid"]) == ("target", target_id)
            PAYLOADS[event["type"]].model_validate(event["data"])
        assert events[2]["data"]["changed"] == ["host_key"]
        assert [e["data"]["version"] for e in events if e["type"] == "credential.changed"] == [1, 2]
        world.assert_absent(events, PASSWORD)
        assert {p.topic for p in world.runtime.published} == {e["type"] for e in events}

    async def test_a_refused_change_announces_nothing(self, world: World) -> None:
        target = await world.create(name="web1")
        await world.drain()
        await world.client.patch(f"/targets/{target['id']}", headers=world.auth(),
                                 json={"port": 0})
        await world.client.post("/targets", headers=world.auth(), json={
            "name": "web1", "host": "10.0.0.1", "username": "u"})
        assert await world.topics() == []

    async def test_no_subscriptions(self, world: World) -> None:
        response = await world.client.get("/dapr/subscribe")
        assert response.status_code == 404 or response.json() == []
