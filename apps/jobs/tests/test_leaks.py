"""NO LEAKS: secret parameter values go to the executor and nowhere else — not into the jobs
database (rows and SQLite file bytes), a response, an event or a log line; not even when the run
is refused."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import World

SECRET = "Pa55-Secret-Param-Value-9001"
REFUSED_SECRET = "Refused-Run-Secret-Value-4242"
DEFAULT_SECRET = "Stored-Default-Secret-1337"


async def test_secret_values_stay_out_of_everything(world: World,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world.targets.add("web1", tags=("web",))
    job = await world.create(
        steps=[{"name": "login", "kind": "command",
                "command": "app-login --user {{ user }} --password {{ password }}"}],
        parameters=[{"name": "user", "default": "deploy"},
                    {"name": "password", "type": "secret", "required": True}],
        targets={"tags": ["web"]})

    # a definition that tries to store a secret default is refused, and not echoed
    refused_definition = await world.client.post("/jobs", headers=world.auth(), json={
        "name": "leaky", "steps": [{"name": "a", "kind": "command", "command": "x {{ p }}"}],
        "parameters": [{"name": "p", "type": "secret", "default": DEFAULT_SECRET}]})
    assert refused_definition.status_code == 422

    # runs: accepted, and refused at several stages, each carrying a secret
    for _ in range(2):
        ok = await world.run(job["id"], {"parameters": {"password": SECRET}})
        assert ok.status_code == 202
    for payload in ({"parameters": {"password": REFUSED_SECRET, "nope": 1}},
                    {"parameters": {"password": REFUSED_SECRET}, "targets": {"tags": ["none"]}},
                    {"parameters": {"password": REFUSED_SECRET, "user": ["x"]}}):
        refused = await world.run(job["id"], payload)
        assert refused.status_code == 422
    world.executor.refuse = (409, {"status": 409, "title": "Conflict", "detail": "busy"})
    assert (await world.run(job["id"], {"parameters": {"password": REFUSED_SECRET}})
            ).status_code == 409

    # the executor did receive the secret (it is the one place it must go)
    assert [r.secret_values for r in world.executor.runs] == [{"password": SECRET}] * 2
    assert all(SECRET.encode() in raw for raw in world.executor.raw)
    assert all(r.values == {"user": "deploy"} for r in world.executor.runs)

    secrets = (SECRET, REFUSED_SECRET, DEFAULT_SECRET)
    dump = await world.database_dump()
    events = json.dumps(await world.events())
    logs = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str)
                     for r in caplog.records)
    for secret in secrets:
        assert secret.encode() not in dump, "a secret reached the database"
        assert secret not in events, "a secret reached an event"
        assert secret not in logs, "a secret reached a log line"
        for body in world.bodies:
            assert secret not in body, "a secret reached a response"
    # the scans see real data: the job's own text is there
    assert b"app-login --user" in dump and "job.created" in events
