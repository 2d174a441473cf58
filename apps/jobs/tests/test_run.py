"""`POST /jobs/{id}/run`: values typed, targets resolved, roles enforced, then the executor asked.

The targets and executor services are stand-ins mounted at the runtime port (unit tests);
test_targets_e2e.py resolves through the real targets app.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from opsconductor_contracts.jobspec import posix_quote, render

if TYPE_CHECKING:
    from conftest import World

HOSTILE = ["; touch /tmp/pwned", "$(id)", "`id`", "a\nb; rm -rf ~", "it's \"quoted\"", "${HOME}",
           "| cat /etc/passwd", "&& reboot", "\\'; echo x", "-rf", "*", "\t\r\n", "ünïcødé ✓"]


async def job_with(world: World, **fields: Any) -> dict[str, Any]:
    fields.setdefault("steps", [{"name": "say", "kind": "command", "command": "echo {{ msg }}"}])
    fields.setdefault("parameters", [{"name": "msg", "default": "hi"}])
    fields.setdefault("targets", {"tags": ["web"]})
    return await world.create(**fields)


class TestRun:
    async def test_a_run_reaches_the_executor(self, world: World) -> None:
        web1 = world.targets.add("web1", tags=("web",))
        web2 = world.targets.add("web2", tags=("web", "prod"))
        world.targets.add("db1", tags=("db",))
        job = await job_with(world, concurrency=7, timeout_s=99,
                             retry={"count": 1, "delay_s": 2, "backoff": 1.5})
        runner = world.auth(world.runner, user="runner-1")
        response = await world.run(job["id"], {"parameters": {"msg": "hello"}}, headers=runner)
        assert response.status_code == 202, response.text
        execution_id = response.json()["execution_id"]
        assert response.json() == {"execution_id": execution_id}

        [run] = world.executor.runs
        assert run.job_id == job["id"] and run.job_name == job["name"] and run.job_version == 1
        assert (run.trigger, run.requested_by) == ("manual", "runner-1")
        assert [(t.target_id, t.name, t.protocol) for t in run.targets] == [
            (web1.target_id, "web1", "ssh"), (web2.target_id, "web2", "ssh")]
        assert run.values == {"msg": "hello"} and run.secret_values == {}
        assert [s.name for s in run.steps] == ["say"]
        assert (run.concurrency, run.timeout_s) == (7, 99)
        assert (run.retry.count, run.retry.delay_s, run.retry.backoff) == (1, 2.0, 1.5)
        assert run.idempotency_key is None
        assert world.targets.calls == [{"ids": [], "tags": ["web"]}]

    async def test_no_body_uses_defaults(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world)
        response = await world.client.post(f"/jobs/{job['id']}/run",
                                           headers=world.auth(world.runner))
        assert response.status_code == 202, response.text
        assert world.executor.runs[0].values == {"msg": "hi"}

    async def test_values_are_typed_and_secrets_kept_apart(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world, steps=[{"name": "s", "kind": "command", "command": (
            "deploy {{ count }} {{ fast }} {{ env }} {{ token }} {{ note }} {{ opt }}")}],
            parameters=[{"name": "count", "type": "int", "default": 3},
                        {"name": "fast", "type": "bool"},
                        {"name": "env", "type": "choice", "choices": ["prod", "stage"],
                         "required": True},
                        {"name": "token", "type": "secret", "required": True},
                        {"name": "note", "type": "string", "default": "n/a"},
                        {"name": "opt", "type": "string"}])
        response = await world.run(job["id"], {"parameters": {
            "count": "12", "fast": "TRUE", "env": "prod", "token": "s3cr3t-token-value"}})
        assert response.status_code == 202, response.text
        run = world.executor.runs[0]
        assert run.values == {"count": 12, "fast": True, "env": "prod", "note": "n/a", "opt": ""}
        assert run.secret_values == {"token": "s3cr3t-token-value"}
        assert "s3cr3t-token-value" not in repr(run)

    @pytest.mark.parametrize(("given", "field", "words"), [
        ({"nope": "x"}, "parameters.nope", "not a parameter"),
        ({}, "parameters.env", "required"),
        ({"env": ""}, "parameters.env", "required"),
        ({"env": "qa"}, "parameters.env", "not one of the choices"),
        ({"env": "prod", "count": "twelve"}, "parameters.count", "whole number"),
        ({"env": "prod", "count": True}, "parameters.count", "whole number"),
        ({"env": "prod", "fast": "maybe"}, "parameters.fast", "true or false"),
        ({"env": "prod", "fast": 1}, "parameters.fast", "true or false"),
        ({"env": 5}, "parameters.env", "text"),
        ({"env": "prod", "note": "a\x00b"}, "parameters.note", "NUL"),
    ])
    async def test_bad_values_are_422(self, world: World, given: dict[str, Any], field: str,
                                      words: str) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world, steps=[{"name": "s", "kind": "command",
                                            "command": "x {{ count }} {{ fast }} {{ env }} "
                                                       "{{ note }}"}],
                             parameters=[{"name": "count", "type": "int"},
                                         {"name": "fast", "type": "bool"},
                                         {"name": "env", "type": "choice", "required": True,
                                          "choices": ["prod", "stage"]},
                                         {"name": "note"}])
        response = await world.run(job["id"], {"parameters": given})
        assert world.is_problem(response, 422), response.text
        assert words in response.json()["errors"][field]
        assert world.executor.runs == []

    async def test_schema_errors_of_the_run_body(self, world: World) -> None:
        job = await job_with(world)
        for payload in ({"parameters": {"msg": [1]}}, {"parameters": {"msg": None}},
                        {"parameters": {"msg": 1.5}}, {"params": {}},
                        {"targets": {"tags": ["NOT OK"]}}):
            response = await world.run(job["id"], payload)
            assert world.is_problem(response, 422), payload

    async def test_targets_override_and_missing_ids(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        db1 = world.targets.add("db1", protocol="winrm", tags=("db",))
        job = await job_with(world)
        response = await world.run(job["id"], {"targets": {"ids": [db1.target_id]}})
        assert response.status_code == 202
        assert [t.name for t in world.executor.runs[0].targets] == ["db1"]
        assert world.executor.runs[0].targets[0].protocol == "winrm"
        gone = str(uuid.uuid4())
        response = await world.run(job["id"], {"targets": {"ids": [db1.target_id, gone]}})
        assert world.is_problem(response, 422)
        assert gone in response.json()["errors"]["targets"]

    async def test_no_targets_is_422(self, world: World) -> None:
        job = await job_with(world, targets={"tags": ["nothing-has-this"]})
        response = await world.run(job["id"])
        assert world.is_problem(response, 422)
        assert response.json()["errors"]["targets"] == "no targets match the selector"
        bare = await job_with(world, targets={})
        response = await world.run(bare["id"])
        assert world.is_problem(response, 422)
        assert "selects no targets" in response.json()["errors"]["targets"]
        assert world.executor.runs == []

    async def test_too_many_targets_is_422(self, make_world: Any) -> None:
        async with make_world(max_targets_per_run=2) as world:
            for n in range(3):
                world.targets.add(f"web{n}", tags=("web",))
            job = await job_with(world)
            response = await world.run(job["id"])
            assert world.is_problem(response, 422)
            assert "at most 2" in response.json()["errors"]["targets"]

    async def test_missing_job_is_404_and_permission_403(self, world: World) -> None:
        assert world.is_problem(await world.run(str(uuid.uuid4())), 404)
        job = await job_with(world)
        response = await world.run(job["id"], headers=world.auth(["jobs:read", "jobs:write"]))
        assert world.is_problem(response, 403)


class TestRunRoles:
    async def test_only_listed_roles_or_admins_run(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world, run_roles=["deployers"])
        stranger = world.auth(world.runner, roles=["operator"])
        response = await world.run(job["id"], headers=stranger)
        assert world.is_problem(response, 403)
        assert "roles" in response.json()["detail"]
        deployer = world.auth(world.runner, roles=["operator", "deployers"])
        assert (await world.run(job["id"], headers=deployer)).status_code == 202
        admin = world.auth(world.runner, roles=["admin"])
        assert (await world.run(job["id"], headers=admin)).status_code == 202
        assert len(world.executor.runs) == 2

    async def test_api_tokens_run_with_trigger_api(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world, run_roles=["robots"])
        token = world.api_token(world.runner, user="robot-1", roles=["robots"])
        response = await world.run(job["id"], headers=token)
        assert response.status_code == 202, response.text
        run = world.executor.runs[0]
        assert (run.trigger, run.requested_by) == ("api", "robot-1")


class TestIdempotency:
    async def test_same_key_same_execution_scoped_to_user(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world)
        first = await world.client.post(f"/jobs/{job['id']}/run", json={}, headers={
            **world.auth(world.runner), "Idempotency-Key": "deploy-42"})
        again = await world.client.post(f"/jobs/{job['id']}/run", json={}, headers={
            **world.auth(world.runner), "Idempotency-Key": "deploy-42"})
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        other_user = await world.client.post(f"/jobs/{job['id']}/run", json={}, headers={
            **world.auth(world.runner, user="someone-else"), "Idempotency-Key": "deploy-42"})
        assert other_user.json() != first.json()
        keys = [r.idempotency_key for r in world.executor.runs]
        assert len(keys) == 2 and all(k and k.startswith("jobs-run:") for k in keys)
        assert keys[0] != keys[1]

    async def test_bad_key_is_422(self, world: World) -> None:
        job = await job_with(world)
        for key in ("x" * 201, "tab\there"):
            response = await world.client.post(f"/jobs/{job['id']}/run", json={}, headers={
                **world.auth(world.runner), "Idempotency-Key": key})
            assert world.is_problem(response, 422), key


class TestExecutorAnswers:
    @pytest.mark.parametrize(("status", "expected"), [
        (409, 409), (422, 422), (404, 404), (403, 403), (400, 422), (429, 429), (500, 503),
        (503, 503)])
    async def test_refusals_come_back_as_domain_errors(self, world: World, status: int,
                                                       expected: int) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world)
        world.executor.refuse = (status, {"type": "about:blank", "title": "No", "status": status,
                                          "detail": "executor says no",
                                          "errors": {"targets": "busy"}})
        response = await world.run(job["id"])
        assert world.is_problem(response, expected), response.text
        if expected < 500:
            assert response.json()["detail"] == "executor says no"

    async def test_executor_down_is_503(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world)
        world.runtime.apps.pop("executor")
        assert world.is_problem(await world.run(job["id"]), 503)

    async def test_targets_down_is_503(self, world: World) -> None:
        job = await job_with(world)
        world.runtime.apps.pop("targets")
        assert world.is_problem(await world.run(job["id"]), 503)


class TestHostileValues:
    async def test_values_arrive_unchanged_and_stay_literal(self, world: World) -> None:
        world.targets.add("web1", tags=("web",))
        job = await job_with(world, steps=[{"name": "p", "kind": "command",
                                            "command": "printf %s {{ msg }}"}])
        for value in HOSTILE:
            response = await world.run(job["id"], {"parameters": {"msg": value}})
            assert response.status_code == 202, (value, response.text)
        received = [run.values["msg"] for run in world.executor.runs]
        assert received == HOSTILE

        # What the executor will run for an SSH target: the step rendered with POSIX quoting.
        # Run through a real shell here, each value comes out as the very same bytes.
        for run in world.executor.runs:
            command = render(run.steps[0].command or "", run.values, posix_quote)
            result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=10,
                                    check=True)
            assert result.stdout.decode() == run.values["msg"]
            assert result.stderr == b""
