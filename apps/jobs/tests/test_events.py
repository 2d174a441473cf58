"""What the jobs service announces: CloudEvents through the outbox, never a step text or value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsconductor_contracts import topics
from opsconductor_contracts.events import DangerousStepApproved, JobChanged

if TYPE_CHECKING:
    from conftest import World

PAYLOADS = {topics.JOB_CREATED: JobChanged, topics.JOB_UPDATED: JobChanged,
            topics.JOB_DELETED: JobChanged, topics.DANGEROUS_STEP_APPROVED: DangerousStepApproved}


class TestEvents:
    async def test_a_job_life_in_events(self, world: World) -> None:
        headers = {**world.auth(), "X-Correlation-ID": "corr-jobs-1"}
        created = await world.client.post("/jobs", headers=headers, json={
            "name": "patch", "steps": [{"name": "up", "kind": "command",
                                        "command": "apt-get -y upgrade && reboot"}]})
        job = created.json()
        await world.client.patch(f"/jobs/{job['id']}", headers=headers,
                                 json={"description": "monthly"})
        await world.client.post(f"/jobs/{job['id']}/approvals", headers=headers, json={
            "step_name": "up", "step_sha256": job["dangerous_steps"][0]["sha256"]})
        await world.client.delete(f"/jobs/{job['id']}", headers=headers)

        events = await world.events()
        assert [e["type"] for e in events] == [
            "job.created", "job.updated", "job.dangerous_step_approved", "job.deleted"]
        for event in events:
            assert event["specversion"] == "1.0"
            assert event["source"] == "jobs"
            assert event["actor"] == world.user_id
            assert event["correlationid"] == "corr-jobs-1"
            assert (event["resourcetype"], event["resourceid"]) == ("job", job["id"])
            PAYLOADS[event["type"]].model_validate(event["data"])
            assert "apt-get" not in str(event["data"])
        assert [(e["data"].get("change"), e["data"]["version"]) for e in events] == [
            ("created", 1), ("updated", 2), (None, 2), ("deleted", 2)]
        assert events[0]["data"]["name"] == "patch"
        assert {p.topic for p in world.runtime.published} == {e["type"] for e in events}

    async def test_refused_changes_and_runs_announce_nothing(self, world: World) -> None:
        job = await world.create(name="one")
        await world.drain()
        await world.client.post("/jobs", headers=world.auth(), json={
            "name": "ONE", "steps": [{"name": "a", "kind": "command", "command": "ls"}]})
        await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(),
                                 json={"concurrency": 0})
        await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(["jobs:write"],
                                                                          user="not-owner"),
                                 json={"description": "x"})
        world.targets.add("web1", tags=("web",))
        await world.run(job["id"], {"targets": {"tags": ["web"]}})
        assert len(world.executor.runs) == 1
        assert await world.topics() == []

    async def test_no_subscriptions(self, world: World) -> None:
        response = await world.client.get("/dapr/subscribe")
        assert response.status_code == 404 or response.json() == []
