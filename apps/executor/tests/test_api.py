"""The executor over HTTP, as the gateway and the jobs service call it (served without /api/v1)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Kit, World, WorldFactory

    from opsconductor_testing.runtime import RecordingRuntime

VIEWER = ["executions:read"]
SOME_ID = str(uuid.uuid4())


def is_problem(response: Any, status: int) -> bool:
    return (response.status_code == status
            and response.headers["content-type"].startswith("application/problem+json")
            and response.json()["status"] == status)


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path"), [
        ("GET", "/executions"), ("GET", f"/executions/{SOME_ID}"),
        ("GET", f"/executions/{SOME_ID}/targets"), ("GET", f"/executions/{SOME_ID}/output"),
        ("GET", f"/executions/{SOME_ID}/stream"), ("POST", f"/executions/{SOME_ID}/cancel"),
        ("POST", f"/executions/{SOME_ID}/retry-failed"),
    ])
    async def test_no_token_is_401(self, world: World, method: str, path: str) -> None:
        assert is_problem(await world.client.request(method, path), 401)

    async def test_a_bad_token_is_401(self, world: World) -> None:
        response = await world.client.get("/executions",
                                          headers={"Authorization": "Bearer not.a.token"})
        assert is_problem(response, 401)

    @pytest.mark.parametrize(("method", "path", "perms"), [
        ("GET", "/executions", ["jobs:read"]),
        ("GET", f"/executions/{SOME_ID}", ["jobs:run"]),
        ("GET", f"/executions/{SOME_ID}/stream", ["jobs:read"]),
        ("POST", f"/executions/{SOME_ID}/cancel", ["executions:read"]),
        ("POST", f"/executions/{SOME_ID}/retry-failed", ["executions:read", "executions:cancel"]),
    ])
    async def test_missing_permission_is_403(self, world: World, method: str, path: str,
                                             perms: list[str]) -> None:
        response = await world.client.request(method, path, headers=world.auth(perms))
        assert is_problem(response, 403)


class TestInternalCallers:
    @pytest.mark.parametrize("caller", [None, "gateway", "targets", "Jobs"])
    async def test_only_jobs_and_scheduler_may_ask_for_a_run(self, world: World,
                                                            caller: str | None) -> None:
        headers = {} if caller is None else world.caller(caller)
        response = await world.client.post("/internal/executions", json=world.request(),
                                           headers=headers)
        assert is_problem(response, 403)
        assert (await world.client.get("/executions", headers=world.auth())).json()["items"] == []

    @pytest.mark.parametrize("caller", ["jobs", "scheduler"])
    async def test_jobs_and_scheduler_may(self, world: World, caller: str) -> None:
        execution_id = await world.submit(world.request(), caller=caller)
        assert (await world.wait_final(execution_id))["status"] == "succeeded"

    @pytest.mark.parametrize("caller", [None, "jobs", "executor"])
    async def test_only_the_gateway_reads_the_stream(self, world: World,
                                                     caller: str | None) -> None:
        execution_id = await world.submit(world.request())
        headers = {} if caller is None else world.caller(caller)
        response = await world.client.get(f"/internal/executions/{execution_id}/stream",
                                          headers=headers)
        assert is_problem(response, 403)


class TestCreate:
    async def test_created_then_run_to_the_end(self, world: World) -> None:
        body = world.request(["web1", "web2"])
        response = await world.client.post("/internal/executions", json=body,
                                           headers=world.caller())
        assert response.status_code == 201
        execution_id = response.json()["execution_id"]
        assert uuid.UUID(execution_id)
        final = await world.wait_final(execution_id)
        assert final["status"] == "succeeded"
        assert final["job_id"] == body["job_id"] and final["trigger"] == "manual"
        assert final["requested_by"] == world.user_id
        assert final["counts"] == {"total": 2, "succeeded": 2, "failed": 0, "running": 0,
                                   "pending": 0, "timed_out": 0, "canceled": 0, "interrupted": 0}
        for field in ("created_at", "started_at", "finished_at"):
            assert final[field].endswith("Z")
        assert final["created_at"] <= final["started_at"] <= final["finished_at"]

    async def test_the_replica_that_accepts_a_run_has_started_it_when_it_answers(
            self, make_world: WorldFactory, kit: Kit) -> None:
        """The claim is part of the creating transaction: no queued moment, no second claim."""
        engine = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0)})
        async with make_world(engine=engine) as world:
            execution_id = await world.submit(world.request(["web1"], timeout_s=600))
            row = await world.execution(execution_id)
            assert row["status"] == "running" and row["started_at"] is not None, row
            # Its first record is the start (the engine may already have written output).
            records = [i["event"] for i in await world.stream(execution_id)]
            assert records[0] == "started" and records.count("started") == 1, records
            events = [e["type"] for e in await world.events()]
            assert events.index("execution.requested") < events.index("execution.started")
            await asyncio.wait_for(engine.hanging.wait(), 30)
            await world.client.post(f"/executions/{execution_id}/cancel", headers=world.auth())
            assert (await world.wait_final(execution_id))["status"] == "canceled"

    async def test_a_request_that_fails_gives_its_slot_back(self, make_world: WorldFactory,
                                                          kit: Kit) -> None:
        engine = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0)})
        async with make_world(engine=engine, max_running_executions=1) as world:
            publisher = world.app.state.publisher
            emit = publisher.emit

            async def broken(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("the outbox is unwritable (test)")

            publisher.emit = broken
            try:
                failed = await world.client.post("/internal/executions", json=world.request(),
                                                 headers=world.caller())
            finally:
                publisher.emit = emit
            assert failed.status_code == 500
            assert (await world.client.get("/executions", headers=world.auth())).json()[
                "items"] == []
            # The only slot is free again: the next run starts at once instead of queueing.
            execution_id = await world.submit(world.request(["web1"]))
            assert (await world.execution(execution_id))["status"] == "running"
            await asyncio.wait_for(engine.hanging.wait(), 30)
            await world.client.post(f"/executions/{execution_id}/cancel", headers=world.auth())
            assert (await world.wait_final(execution_id))["status"] == "canceled"

    async def test_an_idempotency_key_makes_one_execution(self, world: World) -> None:
        body = world.request(idempotency_key="schedule-42-2031-01-01T00:00")
        first = await world.client.post("/internal/executions", json=body, headers=world.caller())
        again = await world.client.post("/internal/executions", json=body,
                                        headers=world.caller("scheduler"))
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        listed = (await world.client.get("/executions", headers=world.auth())).json()["items"]
        assert [e["id"] for e in listed] == [first.json()["execution_id"]]

    async def test_a_key_reused_for_another_job_is_409(self, world: World) -> None:
        await world.submit(world.request(idempotency_key="k-1"))
        other = world.request(idempotency_key="k-1")
        response = await world.client.post("/internal/executions", json=other,
                                           headers=world.caller())
        assert is_problem(response, 409)

    @pytest.mark.parametrize(("change", "field"), [
        ({"steps": []}, "steps"),
        ({"targets": []}, "targets"),
        ({"concurrency": 0}, "concurrency"),
        ({"unknown": 1}, "unknown"),
        ({"trigger": "cron"}, "trigger"),
        ({"job_id": "j" * 65}, "job_id"),
        ({"requested_by": ""}, "requested_by"),
    ])
    async def test_invalid_requests_are_422(self, world: World, change: dict[str, Any],
                                            field: str) -> None:
        body = {**world.request(), **change}
        response = await world.client.post("/internal/executions", json=body,
                                           headers=world.caller())
        assert is_problem(response, 422)
        assert any(field in key for key in response.json()["errors"])

    async def test_rule_violations_are_422_with_field_errors(self, world: World) -> None:
        body = world.request(["web1"])
        body["targets"].append(dict(body["targets"][0]))
        body["parameters"] = [{"name": "token", "type": "secret"}]
        body["secret_values"] = {"not_declared": "Value-That-Is-Never-Echoed"}
        body["values"] = {"token": "plain"}
        response = await world.client.post("/internal/executions", json=body,
                                           headers=world.caller())
        assert is_problem(response, 422)
        errors = response.json()["errors"]
        assert set(errors) == {"targets.1.target_id", "secret_values.not_declared", "values.token"}
        assert "Value-That-Is-Never-Echoed" not in response.text

    async def test_a_malformed_secret_value_is_not_echoed(self, world: World,
                                                         caplog: pytest.LogCaptureFixture) -> None:
        body = world.request(parameters=[{"name": "token", "type": "secret"}],
                             secret_values={"token": ["Leaky-Secret-In-A-List-99"]})
        response = await world.client.post("/internal/executions", json=body,
                                           headers=world.caller())
        assert is_problem(response, 422)
        assert "Leaky-Secret-In-A-List-99" not in response.text
        assert "Leaky-Secret-In-A-List-99" not in caplog.text

    async def test_without_the_secrets_key_a_run_with_secrets_is_503(
            self, make_world: WorldFactory, runtime: RecordingRuntime) -> None:
        runtime.secrets.clear()
        async with make_world() as world:
            body = world.request(parameters=[{"name": "token", "type": "secret"}],
                                 secret_values={"token": "Value-Not-Stored-Anywhere"})
            response = await world.client.post("/internal/executions", json=body,
                                               headers=world.caller())
            assert is_problem(response, 503)
            # A run without secret values does not need the key.
            await world.submit(world.request())


class TestRead:
    async def test_unknown_ids_are_404_and_malformed_ids_422(self, world: World) -> None:
        for suffix in ("", "/targets", "/output", "/stream"):
            response = await world.client.get(f"/executions/{SOME_ID}{suffix}",
                                              headers=world.auth(VIEWER))
            assert is_problem(response, 404)
        response = await world.client.get(f"/internal/executions/{SOME_ID}/stream",
                                          headers=world.caller("gateway"))
        assert is_problem(response, 404)
        assert is_problem(await world.client.get("/executions/not-a-uuid",
                                                 headers=world.auth(VIEWER)), 422)

    async def test_list_filters_and_pages(self, world: World) -> None:
        body = world.request()
        ids = [await world.submit(body if i < 2 else world.request()) for i in range(3)]
        for execution_id in ids:
            await world.wait_final(execution_id)
        viewer = world.auth(VIEWER)
        first = (await world.client.get("/executions", headers=viewer,
                                        params={"limit": 2})).json()
        assert [e["id"] for e in first["items"]] == [ids[2], ids[1]]
        rest = (await world.client.get("/executions", headers=viewer,
                                       params={"cursor": first["next_cursor"]})).json()
        assert [e["id"] for e in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
        by_job = (await world.client.get("/executions", headers=viewer,
                                         params={"job_id": body["job_id"]})).json()
        assert {e["id"] for e in by_job["items"]} == set(ids[:2])
        running = (await world.client.get("/executions", headers=viewer,
                                          params={"status": "running"})).json()
        assert running["items"] == []
        for params in ({"status": "bogus"}, {"limit": 0}, {"limit": 501}, {"cursor": "zz"}):
            response = await world.client.get("/executions", headers=viewer, params=params)
            assert is_problem(response, 422), params

    async def test_targets_and_output(self, world: World) -> None:
        body = world.request(["web1", "web2"])
        execution_id = await world.submit(body)
        await world.wait_final(execution_id)
        viewer = world.auth(VIEWER)
        targets = (await world.client.get(f"/executions/{execution_id}/targets",
                                          headers=viewer)).json()
        assert [t["name"] for t in targets["items"]] == ["web1", "web2"]
        first = targets["items"][0]
        assert {"target_id", "status", "exit_code", "attempts", "started_at", "finished_at",
                "error"} <= set(first)
        assert (first["status"], first["exit_code"], first["attempts"]) == ("succeeded", 0, 1)

        output = (await world.client.get(f"/executions/{execution_id}/output",
                                         headers=viewer)).json()
        seqs = [c["seq"] for c in output["items"]]
        assert seqs == sorted(seqs) and len(seqs) == 4
        assert output["next_after_seq"] == seqs[-1]
        web1 = body["targets"][0]["target_id"]
        mine = (await world.client.get(f"/executions/{execution_id}/output", headers=viewer,
                                       params={"target_id": web1})).json()
        assert [c["data"] for c in mine["items"]] == ["step 0 on web1\n", "step 1 on web1\n"]
        page = (await world.client.get(f"/executions/{execution_id}/output", headers=viewer,
                                       params={"after_seq": seqs[0], "limit": 1})).json()
        assert [c["seq"] for c in page["items"]] == [seqs[1]]
        after_all = (await world.client.get(f"/executions/{execution_id}/output", headers=viewer,
                                            params={"after_seq": seqs[-1]})).json()
        assert after_all == {"items": [], "next_after_seq": seqs[-1]}

    async def test_the_stream_holds_everything_in_seq_order(self, world: World) -> None:
        execution_id = await world.submit(world.request(["web1", "web2"]))
        await world.wait_final(execution_id)
        response = await world.client.get(f"/internal/executions/{execution_id}/stream",
                                          headers=world.caller("gateway"))
        page = response.json()
        items = page["items"]
        assert [i["seq"] for i in items] == list(range(1, len(items) + 1))
        assert items[0]["event"] == "started" and items[-1]["event"] == "finished"
        assert [i["event"] for i in items].count("target_finished") == 2
        assert [i["event"] for i in items].count("output") == 4
        assert page["status"] == "succeeded" and page["next_after_seq"] == items[-1]["seq"]
        assert items[-1]["data"]["status"] == "succeeded"
        output = next(i for i in items if i["event"] == "output")
        assert set(output["data"]) == {"target_id", "stream", "data", "ts"}
        resumed = (await world.client.get(f"/internal/executions/{execution_id}/stream",
                                          headers=world.caller("gateway"),
                                          params={"after_seq": 3, "limit": 2})).json()
        assert [i["seq"] for i in resumed["items"]] == [4, 5]
        assert resumed["next_after_seq"] == 5
        # A reader gets the same record with its own token (the gateway's first page).
        as_reader = await world.client.get(f"/executions/{execution_id}/stream",
                                           headers=world.auth(VIEWER))
        assert as_reader.status_code == 200 and as_reader.json() == page
