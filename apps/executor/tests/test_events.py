"""`execution.requested`: delivered once or many times, to one replica or several, one run."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from opsconductor_contracts import topics

if TYPE_CHECKING:
    from conftest import Kit, World, WorldFactory

ROUTE = "/events/execution-requested"


async def requested_event(world: World, execution_id: str) -> dict[str, Any]:
    for event in await world.events():
        if event["type"] == topics.EXECUTION_REQUESTED and \
                event["data"]["execution_id"] == execution_id:
            return event
    raise AssertionError("no execution.requested event")


class TestSubscription:
    async def test_the_app_subscribes(self, world: World) -> None:
        subscriptions = (await world.client.get("/dapr/subscribe")).json()
        assert {"pubsubname": "pubsub", "topic": topics.EXECUTION_REQUESTED,
                "route": ROUTE} .items() <= subscriptions[0].items()
        assert subscriptions[0]["deadLetterTopic"] == topics.DEAD_LETTER

    async def test_malformed_events_are_dropped(self, world: World) -> None:
        for body in ({"id": "x"}, {"id": "e1", "source": "jobs", "type": "t",
                                   "data": {"execution_id": "not-a-uuid", "job_id": "j"}}):
            response = await world.client.post(ROUTE, json=body)
            assert response.json() == {"status": "DROP"}

    async def test_an_event_for_an_unknown_execution_changes_nothing(self, world: World) -> None:
        body = {"id": str(uuid.uuid4()), "source": "executor", "type": topics.EXECUTION_REQUESTED,
                "data": {"execution_id": str(uuid.uuid4()), "job_id": "j"}}
        assert (await world.client.post(ROUTE, json=body)).json() == {"status": "SUCCESS"}
        assert world.engine.runs == []


class TestDelivery:
    async def test_delivered_twice_one_run(self, world: World) -> None:
        runner = world.app.state.runner
        runner.accepting = False  # no fast path: the event is what starts it
        execution_id = await world.submit(world.request(["web1", "web2"]))
        runner.accepting = True
        event = await requested_event(world, execution_id)
        first = await world.client.post(ROUTE, json=event)
        second = await world.client.post(ROUTE, json=event)
        assert first.json() == second.json() == {"status": "SUCCESS"}
        final = await world.wait_final(execution_id)
        assert final["status"] == "succeeded" and final["counts"]["total"] == 2
        assert len(world.engine.runs) == 1
        assert len(world.engine.dispatched) == 4  # 2 targets x 2 steps, each once
        listed = (await world.client.get("/executions", headers=world.auth())).json()["items"]
        assert [e["id"] for e in listed] == [execution_id]

    async def test_the_event_finds_the_fast_path_claim(self, world: World) -> None:
        execution_id = await world.submit(world.request())
        await world.wait_final(execution_id)
        event = await requested_event(world, execution_id)
        assert (await world.client.post(ROUTE, json=event)).json() == {"status": "SUCCESS"}
        assert len(world.engine.runs) == 1

    async def test_two_replicas_one_event_each_copy(self, make_world: WorldFactory,
                                                    kit: Kit) -> None:
        engine_a, engine_b = kit.ScriptedEngine(), kit.ScriptedEngine()
        async with make_world(engine=engine_a, replica_id="a") as a, \
                make_world(engine=engine_b, replica_id="b") as b:
            a.app.state.runner.accepting = False
            execution_id = await a.submit(a.request(["web1"]))
            a.app.state.runner.accepting = True
            event = await requested_event(a, execution_id)
            # A redelivery after a broker hiccup can reach another replica.
            for world in (b, a, b):
                assert (await world.client.post(ROUTE, json=event)).json() == {
                    "status": "SUCCESS"}
            assert (await a.wait_final(execution_id))["status"] == "succeeded"
            assert len(engine_a.runs) + len(engine_b.runs) == 1
