"""NO LEAKS: a secret parameter value reaches the engine and nothing else — not a table (rows
and SQLite file bytes), a response, a published event or a log line; its sealed copy is gone
once the execution is final."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from opsconductor_executor.models import ExecutionSecret

if TYPE_CHECKING:
    from conftest import Kit, WorldFactory

SECRET = "Deploy-Token-Never-Stored-9c1f"
RETRY_SECRET = "Second-Token-Never-Stored-77aa"


async def sealed_rows(db: object) -> int:
    async with db.transaction() as session:  # type: ignore[attr-defined]
        return int(await session.scalar(select(func.count()).select_from(ExecutionSecret)) or 0)


async def test_no_secret_anywhere(make_world: WorldFactory, kit: Kit,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    engine = kit.ScriptedEngine(scripts={"web1": kit.Script(hang_at=0),
                                         "web2": kit.Script(exit_codes=[4])})
    async with make_world(engine=engine) as world:
        body = world.request(["web1", "web2"], parameters=[
            {"name": "token", "type": "secret", "required": True}],
            secret_values={"token": SECRET})
        body["steps"][0]["command"] = "deploy --token {{ token }}"
        execution_id = await world.submit(body)
        await asyncio.wait_for(engine.hanging.wait(), 30)

        # While it runs: sealed, never in the clear.
        assert await sealed_rows(world.db) == 1
        kit.assert_absent(await world.database_dump(), SECRET)
        assert engine.secret_values_seen == [{"token": SECRET}]

        await world.client.post(f"/executions/{execution_id}/cancel", headers=world.auth())
        await world.wait_final(execution_id)
        assert await sealed_rows(world.db) == 0

        # A retry with the secret given again, and a refused one that carried a secret.
        refused = await world.client.post(f"/executions/{execution_id}/retry-failed",
                                          headers=world.auth(),
                                          json={"parameters": {"token": 5, "x": SECRET}})
        assert refused.status_code == 422
        engine.scripts.clear()
        second = world.request(["web3"], parameters=body["parameters"],
                               secret_values={"token": RETRY_SECRET})
        await world.wait_final(await world.submit(second))

        # Read everything a user or the gateway can read.
        await world.client.get("/executions", headers=world.auth())
        for eid in (execution_id,):
            for suffix in ("", "/targets", "/output"):
                await world.client.get(f"/executions/{eid}{suffix}", headers=world.auth())
            await world.stream(eid)

        events = await world.events()
        kit.assert_absent(events, SECRET, RETRY_SECRET)
        kit.assert_absent("\n".join(world.bodies), SECRET, RETRY_SECRET)
        kit.assert_absent(await world.database_dump(), SECRET, RETRY_SECRET)
        kit.assert_absent(caplog.text, SECRET, RETRY_SECRET)
        assert await sealed_rows(world.db) == 0
        assert SECRET not in repr(engine.runs)
        assert uuid.UUID(execution_id)
