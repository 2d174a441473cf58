"""Jobs over HTTP, as the gateway calls them (served without /api/v1)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import World

SOME_ID = str(uuid.uuid4())
STEP = {"name": "hello", "kind": "command", "command": "echo hello"}


def body(**fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "deploy-web")
    fields.setdefault("steps", [STEP])
    return fields


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path"), [
        ("GET", "/jobs"), ("POST", "/jobs"), ("POST", "/jobs/validate"),
        ("GET", f"/jobs/{SOME_ID}"), ("PATCH", f"/jobs/{SOME_ID}"), ("DELETE", f"/jobs/{SOME_ID}"),
        ("GET", f"/jobs/{SOME_ID}/versions"), ("GET", f"/jobs/{SOME_ID}/versions/1"),
        ("POST", f"/jobs/{SOME_ID}/approvals"), ("POST", f"/jobs/{SOME_ID}/run"),
    ])
    async def test_no_token_is_401(self, world: World, method: str, path: str) -> None:
        response = await world.client.request(method, path)
        assert world.is_problem(response, 401)
        bad = await world.client.request(method, path,
                                         headers={"Authorization": "Bearer not.a.jwt"})
        assert world.is_problem(bad, 401)

    async def test_each_route_needs_its_permission(self, world: World) -> None:
        job = await world.create()
        await world.drain()
        nothing = world.auth(["targets:read"])
        for method, path, payload in (
                ("GET", "/jobs", None), ("GET", f"/jobs/{job['id']}", None),
                ("POST", "/jobs/validate", body()),
                ("GET", f"/jobs/{job['id']}/versions", None)):
            response = await world.client.request(method, path, json=payload, headers=nothing)
            assert world.is_problem(response, 403), (method, path)
        viewer = world.auth(world.viewer)
        for method, path, payload in (
                ("POST", "/jobs", body(name="other")),
                ("PATCH", f"/jobs/{job['id']}", {"description": "x"}),
                ("DELETE", f"/jobs/{job['id']}", None),
                ("POST", f"/jobs/{job['id']}/run", {}),
                ("POST", f"/jobs/{job['id']}/approvals",
                 {"step_name": "hello", "step_sha256": "0" * 64})):
            response = await world.client.request(method, path, json=payload, headers=viewer)
            assert world.is_problem(response, 403), (method, path)
            assert "Missing permission" in response.json()["detail"]
        assert await world.topics() == []
        assert world.executor.runs == []


class TestCreate:
    async def test_create_shows_the_definition(self, world: World) -> None:
        payload = body(
            name="Deploy web", description="rolls the web tier",
            steps=[{"name": "fetch", "kind": "command", "command": "git -C /srv/app pull",
                    "timeout_s": 60},
                   {"name": "migrate", "kind": "script", "script": "set -e\n./migrate {{ env }}\n",
                    "interpreter": "/bin/bash", "continue_on_error": True},
                   {"name": "config", "kind": "upload", "content": "x=1\n",
                    "destination": "/etc/app.conf"}],
            parameters=[{"name": "env", "type": "choice", "choices": ["prod", "stage"],
                         "default": "stage"},
                        {"name": "token", "type": "secret", "required": True}],
            targets={"ids": [SOME_ID], "tags": ["Web", "prod", "web"]},
            concurrency=200, timeout_s=600, retry={"count": 2, "delay_s": 5, "backoff": 2},
            run_roles=["deployers"])
        # "token" is declared but not used: a warning, not an error
        response = await world.client.post("/jobs", json=payload, headers=world.auth(world.author))
        assert response.status_code == 201, response.text
        job = response.json()
        assert response.headers["location"] == f"/jobs/{job['id']}"
        assert job["name"] == "Deploy web"
        assert job["owner_id"] == world.user_id and job["updated_by"] == world.user_id
        assert job["version"] == 1
        assert [s["name"] for s in job["steps"]] == ["fetch", "migrate", "config"]
        assert job["steps"][1]["continue_on_error"] is True
        assert job["targets"] == {"ids": [SOME_ID], "tags": ["prod", "web"]}
        assert (job["concurrency"], job["timeout_s"]) == (200, 600)
        assert job["retry"] == {"count": 2, "delay_s": 5.0, "backoff": 2.0}
        assert job["run_roles"] == ["deployers"]
        assert job["parameters"][1] == {"name": "token", "type": "secret", "required": True,
                                        "default": None, "choices": None}
        assert job["dangerous_steps"] == [] and job["blocked_steps"] == []
        assert job["created_at"].endswith("Z")

    async def test_defaults(self, world: World) -> None:
        job = await world.create()
        assert (job["concurrency"], job["timeout_s"], job["parameters"]) == (50, None, [])
        assert job["targets"] == {"ids": [], "tags": []}
        assert job["retry"] == {"count": 0, "delay_s": 0.0, "backoff": 1.0}

    async def test_duplicate_name_is_409_case_insensitively(self, world: World) -> None:
        await world.create(name="Backup")
        response = await world.client.post("/jobs", json=body(name="backup"),
                                           headers=world.auth(world.author))
        assert world.is_problem(response, 409)
        assert "already exists" in response.json()["detail"]

    @pytest.mark.parametrize(("payload", "field"), [
        (body(steps=[]), "steps"),
        (body(name="   "), "name"),
        (body(colour="red"), "colour"),
        (body(concurrency=5001), "concurrency"),
        (body(concurrency=0), "concurrency"),
        (body(targets={"tags": ["Not A Tag"]}), "targets.tags"),
        (body(targets={"ids": ["nope"]}), "targets.ids.0"),
        (body(run_roles=["Bad Role"]), "run_roles"),
        (body(steps=[{"name": "x", "kind": "shell", "command": "ls"}]), "steps.0.kind"),
        (body(parameters=[{"name": "1bad"}]), "parameters.0.name"),
        (body(retry={"count": 11}), "retry.count"),
    ])
    async def test_schema_errors_are_422(self, world: World, payload: dict[str, Any],
                                         field: str) -> None:
        response = await world.client.post("/jobs", json=payload, headers=world.auth(world.author))
        assert world.is_problem(response, 422)
        assert any(key.startswith(field) for key in response.json()["errors"]), response.json()

    @pytest.mark.parametrize(("payload", "field", "words"), [
        (body(steps=[{"name": "a", "kind": "command", "command": "ls {{ path }}"}]),
         "steps.0.command", "not a declared parameter"),
        (body(steps=[STEP, {"name": "s", "kind": "script", "script": "echo {{who}}"}],
              parameters=[{"name": "whom"}]), "steps.1.script", "{{ who }}"),
        (body(steps=[{"name": "a", "kind": "command"}]), "steps.0.command", "needs a command"),
        (body(steps=[{"name": "a", "kind": "command", "command": "ls", "script": "ls"}]),
         "steps.0.script", "takes no script"),
        (body(steps=[{"name": "a", "kind": "script", "script": "  "}]), "steps.0.script",
         "needs a script"),
        (body(steps=[{"name": "a", "kind": "script", "script": "ls",
                      "interpreter": "bash; reboot"}]), "steps.0.interpreter", "program path"),
        (body(steps=[{"name": "a", "kind": "upload", "destination": "/tmp/x"}]),
         "steps.0.content", "needs content"),
        (body(steps=[{"name": "a", "kind": "upload", "content": "x"}]), "steps.0.destination",
         "needs a destination"),
        (body(steps=[STEP, dict(STEP, name="Hello")]), "steps.1.name", "same name"),
        (body(parameters=[{"name": "a"}, {"name": "a"}]), "parameters.1.name", "twice"),
        (body(parameters=[{"name": "a", "type": "choice"}]), "parameters.0.choices",
         "needs choices"),
        (body(parameters=[{"name": "a", "type": "choice", "choices": ["x", "x"]}]),
         "parameters.0.choices", "once"),
        (body(parameters=[{"name": "a", "choices": ["x"]}]), "parameters.0.choices",
         "only choice"),
        (body(parameters=[{"name": "a", "type": "choice", "choices": ["x"], "default": "y"}]),
         "parameters.0.default", "not one of the choices"),
        (body(parameters=[{"name": "n", "type": "int", "default": "5"}]),
         "parameters.0.default", "whole number"),
        (body(parameters=[{"name": "n", "type": "int", "default": True}]),
         "parameters.0.default", "whole number"),
        (body(parameters=[{"name": "b", "type": "bool", "default": "yes"}]),
         "parameters.0.default", "true or false"),
        (body(parameters=[{"name": "s", "type": "string", "default": 3}]),
         "parameters.0.default", "text"),
        (body(parameters=[{"name": "pw", "type": "secret", "default": "hunter2-default"}]),
         "parameters.0.default", "secret parameter may not have a stored default"),
    ])
    async def test_definition_errors_are_422_with_the_field(
            self, world: World, payload: dict[str, Any], field: str, words: str) -> None:
        response = await world.client.post("/jobs", json=payload, headers=world.auth(world.author))
        assert world.is_problem(response, 422), response.text
        errors = response.json()["errors"]
        assert words in errors[field], errors
        assert "hunter2-default" not in response.text
        assert await world.topics() == []

    async def test_nul_bytes_are_refused(self, world: World) -> None:
        for payload, field in (
                (body(steps=[{"name": "a", "kind": "command", "command": "ls\x00 -la"}]),
                 "steps.0.command"),
                (body(description="a\x00b"), "description"),
                (body(name="x\x00y"), "name")):
            response = await world.client.post("/jobs", json=payload,
                                               headers=world.auth(world.author))
            assert world.is_problem(response, 422), payload
            assert field in response.json()["errors"]

    async def test_docker_style_braces_are_not_parameters(self, world: World) -> None:
        job = await world.create(steps=[{"name": "ps", "kind": "command",
                                         "command": "docker ps --format '{{.Names}}'"}])
        assert job["steps"][0]["command"] == "docker ps --format '{{.Names}}'"


class TestReadAndList:
    async def test_read_and_404(self, world: World) -> None:
        job = await world.create()
        viewer = world.auth(world.viewer)
        response = await world.client.get(f"/jobs/{job['id']}", headers=viewer)
        assert response.status_code == 200 and response.json() == job
        missing = await world.client.get(f"/jobs/{uuid.uuid4()}", headers=viewer)
        assert world.is_problem(missing, 404)
        malformed = await world.client.get("/jobs/not-a-uuid", headers=viewer)
        assert world.is_problem(malformed, 422)

    async def test_list_pages_with_a_cursor(self, world: World) -> None:
        made = [await world.create(name=f"job-{i}") for i in range(5)]
        viewer = world.auth(world.viewer)
        first = (await world.client.get("/jobs?limit=2", headers=viewer)).json()
        assert [j["name"] for j in first["items"]] == ["job-0", "job-1"]
        seen = [j["id"] for j in first["items"]]
        cursor = first["next_cursor"]
        while cursor:
            page = (await world.client.get(f"/jobs?limit=2&cursor={cursor}",
                                           headers=viewer)).json()
            seen += [j["id"] for j in page["items"]]
            cursor = page["next_cursor"]
        assert seen == [j["id"] for j in made]
        for bad in ("limit=0", "limit=501", "cursor=garbage"):
            response = await world.client.get(f"/jobs?{bad}", headers=viewer)
            assert world.is_problem(response, 422), bad


class TestUpdate:
    async def test_owner_edits_and_version_bumps(self, world: World) -> None:
        job = await world.create(name="nightly")
        response = await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(world.author),
                                            json={"description": "now weekly", "concurrency": 10})
        assert response.status_code == 200, response.text
        edited = response.json()
        assert edited["version"] == 2
        assert (edited["description"], edited["concurrency"]) == ("now weekly", 10)
        assert edited["updated_at"] >= job["updated_at"]

    async def test_no_change_keeps_the_version(self, world: World) -> None:
        job = await world.create(description="same")
        await world.drain()
        response = await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(world.author),
                                            json={"description": "same", "steps": [STEP]})
        assert response.json()["version"] == 1
        assert await world.topics() == []

    async def test_others_may_not_edit_or_delete_but_admins_may(self, world: World) -> None:
        job = await world.create()
        stranger = world.auth(world.author, user=str(uuid.uuid4()))
        for method, payload in (("PATCH", {"description": "mine now"}), ("DELETE", None)):
            response = await world.client.request(method, f"/jobs/{job['id']}", json=payload,
                                                  headers=stranger)
            assert world.is_problem(response, 403), method
            assert "owner" in response.json()["detail"]
        admin_by_role = world.auth(["jobs:write", "jobs:read"], user=str(uuid.uuid4()),
                                   roles=["admin"])
        response = await world.client.patch(f"/jobs/{job['id']}", headers=admin_by_role,
                                            json={"description": "fixed by admin"})
        assert response.status_code == 200
        assert response.json()["updated_by"] != job["owner_id"]
        assert response.json()["owner_id"] == job["owner_id"]
        admin_by_rights = world.auth(user=str(uuid.uuid4()))  # every permission
        response = await world.client.delete(f"/jobs/{job['id']}", headers=admin_by_rights)
        assert response.status_code == 204

    async def test_rename_conflict_and_null_fields(self, world: World) -> None:
        await world.create(name="taken")
        job = await world.create(name="mine", timeout_s=30)
        author = world.auth(world.author)
        response = await world.client.patch(f"/jobs/{job['id']}", headers=author,
                                            json={"name": "TAKEN"})
        assert world.is_problem(response, 409)
        for field in ("name", "steps", "concurrency", "targets"):
            response = await world.client.patch(f"/jobs/{job['id']}", headers=author,
                                                json={field: None})
            assert world.is_problem(response, 422), field
        response = await world.client.patch(f"/jobs/{job['id']}", headers=author,
                                            json={"timeout_s": None})
        assert response.status_code == 200 and response.json()["timeout_s"] is None

    async def test_an_edit_is_checked_as_a_whole(self, world: World) -> None:
        job = await world.create(parameters=[{"name": "path"}],
                                 steps=[{"name": "ls", "kind": "command",
                                         "command": "ls {{ path }}"}])
        response = await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(world.author),
                                            json={"parameters": []})
        assert world.is_problem(response, 422)
        assert "steps.0.command" in response.json()["errors"]

    async def test_missing_job_is_404(self, world: World) -> None:
        response = await world.client.patch(f"/jobs/{uuid.uuid4()}",
                                            headers=world.auth(world.author),
                                            json={"description": "x"})
        assert world.is_problem(response, 404)


class TestDelete:
    async def test_delete_then_gone(self, world: World) -> None:
        job = await world.create()
        author = world.auth(world.author)
        assert (await world.client.delete(f"/jobs/{job['id']}", headers=author)).status_code == 204
        for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/versions"):
            assert world.is_problem(await world.client.get(path, headers=author), 404)
        assert world.is_problem(await world.client.delete(f"/jobs/{job['id']}", headers=author),
                                404)
        # the name is free again
        await world.create(name=job["name"])


class TestVersions:
    async def test_every_edit_keeps_the_previous_definition(self, world: World) -> None:
        job = await world.create(name="v", steps=[{"name": "a", "kind": "command",
                                                   "command": "echo one"}])
        author = world.auth(world.author)
        await world.client.patch(f"/jobs/{job['id']}", headers=author, json={
            "steps": [{"name": "a", "kind": "command", "command": "echo two"}]})
        editor = str(uuid.uuid4())
        await world.client.patch(f"/jobs/{job['id']}", headers=world.auth(user=editor),
                                 json={"name": "v2", "concurrency": 3})

        listing = await world.client.get(f"/jobs/{job['id']}/versions",
                                         headers=world.auth(world.viewer))
        assert listing.status_code == 200
        items = listing.json()["items"]
        assert [(v["version"], v["name"], v["changed"]) for v in items] == [
            (1, "v", []), (2, "v", ["steps"]), (3, "v2", ["name", "concurrency"])]
        assert items[2]["created_by"] == editor
        first = (await world.client.get(f"/jobs/{job['id']}/versions/1", headers=author)).json()
        assert first["steps"][0]["command"] == "echo one"
        assert first["concurrency"] == 50
        second = (await world.client.get(f"/jobs/{job['id']}/versions/2", headers=author)).json()
        assert second["steps"][0]["command"] == "echo two"
        current = (await world.client.get(f"/jobs/{job['id']}", headers=author)).json()
        assert current["version"] == 3 and current["name"] == "v2"

    async def test_versions_page_and_404(self, world: World) -> None:
        job = await world.create()
        author = world.auth(world.author)
        for n in range(3):
            await world.client.patch(f"/jobs/{job['id']}", headers=author,
                                     json={"description": f"d{n}"})
        page = (await world.client.get(f"/jobs/{job['id']}/versions?limit=3",
                                       headers=author)).json()
        assert [v["version"] for v in page["items"]] == [1, 2, 3]
        rest = (await world.client.get(
            f"/jobs/{job['id']}/versions?limit=3&cursor={page['next_cursor']}",
            headers=author)).json()
        assert [v["version"] for v in rest["items"]] == [4] and rest["next_cursor"] is None
        for path in (f"/jobs/{job['id']}/versions/5", f"/jobs/{uuid.uuid4()}/versions/1"):
            assert world.is_problem(await world.client.get(path, headers=author), 404)
        assert world.is_problem(
            await world.client.get(f"/jobs/{job['id']}/versions/0", headers=author), 422)


class TestValidate:
    async def test_findings_without_saving(self, world: World) -> None:
        payload = body(
            steps=[{"name": "wipe", "kind": "command", "command": "rm -rf / {{ undeclared }}"},
                   {"name": "slow", "kind": "command", "command": "sleep 100", "timeout_s": 900}],
            parameters=[{"name": "unused"}], timeout_s=60)
        response = await world.client.post("/jobs/validate", json=payload,
                                           headers=world.auth(world.viewer))
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["valid"] is False
        by_severity = {(f["severity"], f.get("field"), f.get("rule")) for f in result["findings"]}
        assert ("error", "steps.0.command", None) in by_severity
        assert ("danger", "steps.0.command", "rm-rf-root") in by_severity
        assert ("warning", "parameters.0", None) in by_severity
        assert ("warning", "targets", None) in by_severity
        assert ("warning", "steps.1.timeout_s", None) in by_severity
        danger = next(f for f in result["findings"] if f["severity"] == "danger")
        assert danger["step"] == "wipe" and danger["message"]
        listing = await world.client.get("/jobs", headers=world.auth(world.viewer))
        assert listing.json()["items"] == []

    async def test_a_clean_definition_is_valid(self, world: World) -> None:
        response = await world.client.post("/jobs/validate", headers=world.auth(world.author),
                                           json=body(targets={"tags": ["web"]}))
        assert response.json() == {"valid": True, "findings": []}

    async def test_dangerous_but_valid(self, world: World) -> None:
        response = await world.client.post("/jobs/validate", headers=world.auth(world.author),
                                           json=body(targets={"tags": ["web"]}, steps=[
                                               {"name": "r", "kind": "command",
                                                "command": "sudo reboot"}]))
        result = response.json()
        assert result["valid"] is True
        assert [(f["severity"], f["rule"]) for f in result["findings"]] == [
            ("danger", "power-off")]

    async def test_schema_errors_are_still_422(self, world: World) -> None:
        response = await world.client.post("/jobs/validate", headers=world.auth(world.author),
                                           json={"name": "x", "steps": "ls"})
        assert world.is_problem(response, 422)
