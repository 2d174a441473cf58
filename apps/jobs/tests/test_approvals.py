"""Approving a dangerous step's exact text: it runs afterwards; editing the text blocks it again."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import World

WIPE = "dd if=/dev/zero of=/dev/sdb bs=1M count={{ count }}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def dangerous_job(world: World, command: str = WIPE) -> dict[str, Any]:
    world.targets.add("web1", tags=("web",))
    return await world.create(
        steps=[{"name": "check", "kind": "command", "command": "lsblk"},
               {"name": "wipe", "kind": "command", "command": command}],
        parameters=[{"name": "count", "type": "int", "default": 1}], targets={"tags": ["web"]})


async def approve(world: World, job_id: str, step: str, digest: str,
                  perms: list[str] | None = None) -> Any:
    return await world.client.post(f"/jobs/{job_id}/approvals",
                                   json={"step_name": step, "step_sha256": digest},
                                   headers=world.auth(perms or world.approver, user="approver-1"))


class TestApprovalFlow:
    async def test_blocked_until_approved(self, world: World) -> None:
        job = await dangerous_job(world)
        assert job["blocked_steps"] == ["wipe"]
        assert job["dangerous_steps"][0]["sha256"] == sha(WIPE)

        blocked = await world.run(job["id"])
        assert world.is_problem(blocked, 403)
        problem = blocked.json()
        assert problem["type"].endswith("/dangerous-command")
        assert "dd-block-device" in problem["detail"]
        assert "dd-block-device" in problem["errors"]["steps.1.command"]
        assert world.executor.runs == []
        await world.drain()

        response = await approve(world, job["id"], "wipe", sha(WIPE).upper())
        assert response.status_code == 201, response.text
        approval = response.json()
        assert approval["step_sha256"] == sha(WIPE) and approval["rules"] == ["dd-block-device"]
        assert (approval["approved_by"], approval["version"]) == ("approver-1", 1)

        [event] = await world.events()
        assert event["type"] == "job.dangerous_step_approved"
        assert event["data"] == {"job_id": job["id"], "version": 1, "step_name": "wipe",
                                 "step_sha256": sha(WIPE), "rules": ["dd-block-device"],
                                 "approved_by": "approver-1"}
        assert event["actor"] == "approver-1" and event["resourceid"] == job["id"]

        read = (await world.client.get(f"/jobs/{job['id']}", headers=world.auth())).json()
        assert read["blocked_steps"] == []
        assert read["dangerous_steps"][0]["approved"] is True
        assert read["dangerous_steps"][0]["approved_by"] == "approver-1"
        assert (await world.run(job["id"])).status_code == 202

        again = await approve(world, job["id"], "wipe", sha(WIPE))
        assert again.status_code == 200
        assert await world.topics() == ["job.dangerous_step_approved"]  # no second event

    async def test_the_owner_may_approve_with_the_permission(self, world: World) -> None:
        job = await dangerous_job(world)
        response = await world.client.post(
            f"/jobs/{job['id']}/approvals", json={"step_name": "wipe", "step_sha256": sha(WIPE)},
            headers=world.auth([*world.author, "jobs:approve_dangerous"]))
        assert response.status_code == 201
        assert response.json()["approved_by"] == job["owner_id"]

    async def test_editing_the_text_invalidates_the_approval(self, world: World) -> None:
        job = await dangerous_job(world)
        assert (await approve(world, job["id"], "wipe", sha(WIPE))).status_code == 201
        author = world.auth(world.author)
        changed = WIPE.replace("sdb", "sdc")
        steps = [{"name": "check", "kind": "command", "command": "lsblk"},
                 {"name": "wipe", "kind": "command", "command": changed}]
        edited = (await world.client.patch(f"/jobs/{job['id']}", headers=author,
                                           json={"steps": steps})).json()
        assert edited["version"] == 2 and edited["blocked_steps"] == ["wipe"]
        assert world.is_problem(await world.run(job["id"]), 403)
        stale = await approve(world, job["id"], "wipe", sha(WIPE))
        assert world.is_problem(stale, 409)
        assert "version 2" in stale.json()["detail"]

        # Other edits keep the approval of unchanged text; going back to approved text too.
        steps[1]["command"] = WIPE
        back = (await world.client.patch(f"/jobs/{job['id']}", headers=author,
                                         json={"steps": steps, "description": "x"})).json()
        assert back["version"] == 3 and back["blocked_steps"] == []
        assert (await world.run(job["id"])).status_code == 202

    async def test_renaming_the_step_needs_a_new_approval(self, world: World) -> None:
        job = await dangerous_job(world)
        await approve(world, job["id"], "wipe", sha(WIPE))
        renamed = (await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(), json={
            "steps": [{"name": "check", "kind": "command", "command": "lsblk"},
                      {"name": "erase", "kind": "command", "command": WIPE}]})).json()
        assert renamed["blocked_steps"] == ["erase"]


class TestApprovalRefusals:
    async def test_permission_404_422_409(self, world: World) -> None:
        job = await dangerous_job(world)
        response = await approve(world, job["id"], "wipe", sha(WIPE),
                                 perms=["jobs:read", "jobs:write", "jobs:run"])
        assert world.is_problem(response, 403)
        response = await approve(world, job["id"].replace(job["id"][:8], "00000000"), "wipe",
                                 sha(WIPE))
        assert world.is_problem(response, 404)
        response = await approve(world, job["id"], "nope", sha(WIPE))
        assert world.is_problem(response, 422)
        assert "step_name" in response.json()["errors"]
        response = await approve(world, job["id"], "check", sha("lsblk"))
        assert world.is_problem(response, 409)
        assert "nothing to approve" in response.json()["detail"]
        for digest in ("abc", "z" * 64):
            assert world.is_problem(await approve(world, job["id"], "wipe", digest), 422)
        assert await world.topics() == ["job.created"]


class TestRunTimeScreening:
    async def test_values_that_make_a_step_dangerous_block_the_run(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await world.create(
            steps=[{"name": "clean", "kind": "command", "command": "rm -rf {{ dir }}"},
                   {"name": "act", "kind": "command", "command": "systemctl {{ action }} app"}],
            parameters=[{"name": "dir", "default": "/tmp/build"},
                        {"name": "action", "default": "restart"}],
            targets={"tags": ["web"]})
        assert job["blocked_steps"] == []
        assert (await world.run(job["id"])).status_code == 202
        for parameters, field, rule in (({"dir": "/"}, "steps.0.command", "rm-rf-root"),
                                        ({"dir": "/*"}, "steps.0.command", "rm-rf-root"),
                                        ({"action": "reboot"}, "steps.1.command", "power-off")):
            response = await world.run(job["id"], {"parameters": parameters})
            assert world.is_problem(response, 403), parameters
            assert rule in response.json()["errors"][field]
            assert "parameter values" in response.json()["errors"][field]
        # Quoting makes these one literal argument each: nothing to flag.
        for value in ("/ && reboot", "; rm -rf /", "$(reboot)"):
            response = await world.run(job["id"], {"parameters": {"dir": value}})
            assert response.status_code == 202, (value, response.text)
        assert len(world.executor.runs) == 4

    async def test_only_rules_for_the_runs_protocols_apply(self, world: World) -> None:
        linux = world.targets.add("web1", tags=("web",))
        windows = world.targets.add("win1", protocol="winrm", tags=("win",))
        job = await world.create(steps=[{"name": "restart", "kind": "command",
                                         "command": "Restart-Computer -Force"}],
                                 targets={"tags": ["web"]})
        assert job["blocked_steps"] == ["restart"]
        # A PowerShell rule does not concern SSH targets...
        assert (await world.run(job["id"])).status_code == 202
        assert world.executor.runs[0].targets[0].target_id == linux.target_id
        # ...but blocks the run the moment a WinRM target is in it.
        response = await world.run(job["id"], {"targets": {"ids": [windows.target_id]}})
        assert world.is_problem(response, 403)
