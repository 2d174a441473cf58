"""`POST /internal/targets/resolve`: a job's selector (ids, tags) → the targets a run goes to."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from opsconductor_contracts.clients.targets import TargetsClient
from opsconductor_core.problems import InvalidInput

if TYPE_CHECKING:
    from conftest import World

PASSWORD = "Resolve-Never-Shows-This-77"


class TestResolve:
    async def test_ids_and_tags_union_each_once_by_name(self, world: World) -> None:
        web1 = await world.create(name="web-b", tags=["web", "prod"],
                                  credential={"type": "password", "password": PASSWORD})
        web2 = await world.create(name="web-a", tags=["web", "prod"])
        await world.create(name="web-stage", tags=["web", "stage"])
        db = await world.create(name="db-1", tags=["db", "prod"], protocol="winrm",
                                host="10.0.0.9", username="Administrator")
        gone = str(uuid.uuid4())

        response = await world.client.post("/internal/targets/resolve", json={
            "ids": [db["id"], web1["id"], gone], "tags": ["Prod", "web"]})

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["items"] == [
            {"target_id": db["id"], "name": "db-1", "protocol": "winrm"},
            {"target_id": web2["id"], "name": "web-a", "protocol": "ssh"},
            {"target_id": web1["id"], "name": "web-b", "protocol": "ssh"},
        ]
        assert body["missing"] == [gone]
        assert PASSWORD not in response.text

    async def test_tags_alone_need_every_tag(self, world: World) -> None:
        await world.create(name="only-web", tags=["web"])
        both = await world.create(name="both", tags=["web", "prod"])
        response = await world.client.post("/internal/targets/resolve",
                                           json={"tags": ["web", "prod"]})
        assert [t["target_id"] for t in response.json()["items"]] == [both["id"]]

    async def test_nothing_matches_is_an_empty_answer(self, world: World) -> None:
        response = await world.client.post("/internal/targets/resolve", json={"tags": ["nope"]})
        assert response.status_code == 200
        assert response.json() == {"items": [], "missing": []}

    async def test_bad_selectors_are_422(self, world: World) -> None:
        for body in ({}, {"ids": [], "tags": []}, {"ids": ["not-a-uuid"]}, {"tags": ["Bad Tag!"]},
                     {"tags": ["web"], "names": ["x"]}):
            response = await world.client.post("/internal/targets/resolve", json=body)
            assert response.status_code == 422, body

    async def test_client_over_the_runtime(self, world: World) -> None:
        target = await world.create(name="web1", tags=["web"])
        world.runtime.mount("targets", world.app)
        client = TargetsClient(world.runtime)
        resolved = await client.resolve(tags=["web"])
        assert [(t.target_id, t.name, t.protocol) for t in resolved.items] == [
            (target["id"], "web1", "ssh")]
        try:
            await client.resolve(tags=["NOT OK"])
        except InvalidInput as exc:
            assert exc.errors and "tags" in next(iter(exc.errors))
        else:
            raise AssertionError("a malformed tag was accepted")
