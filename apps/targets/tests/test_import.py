"""Inventory import (dry run, idempotency, slices, refusals) and export (never a secret)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import World, WorldFactory

WIN_PASSWORD = "W1n-Import-Secret-77"

INI = textwrap.dedent(f"""\
    [web]
    web[1:3] ansible_host=10.0.1.1 ansible_user=deploy

    [db]
    db1 ansible_host=10.0.2.1 ansible_port=2200 ansible_user=postgres

    [windows]
    win1 ansible_host=10.0.3.1 ansible_connection=winrm ansible_password={WIN_PASSWORD}

    [windows:vars]
    ansible_user=Administrator

    [prod:children]
    web
    db
    """)

YAML = textwrap.dedent("""\
    all:
      children:
        prod:
          vars: {ansible_user: deploy}
          children:
            web:
              hosts:
                web1: {ansible_host: 10.0.1.1}
                web2: {ansible_host: 10.0.1.1}
    """)

CSV = ("name,host,port,protocol,username,tags\n"
       "web1,10.0.1.1,,ssh,deploy,web\n"
       "win2,10.0.3.2,5985,winrm,Administrator,windows\n")


async def run_import(world: World, text: str, *, perms: list[str] | None = None,
                     **params: Any) -> Any:
    return await world.client.post("/targets/import", headers=world.auth(perms),
                                   content=text.encode(), params=params)


async def listing(world: World) -> dict[str, dict[str, Any]]:
    response = await world.client.get("/targets", headers=world.auth(), params={"limit": 500})
    return {t["name"]: t for t in response.json()["items"]}


class TestImport:
    async def test_dry_run_changes_nothing(self, world: World) -> None:
        response = await run_import(world, INI, dry_run="true")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["dry_run"], body["format"], body["total"]) == (True, "ini", 5)
        assert body["summary"] == {"created": 5, "updated": 0, "unchanged": 0}
        assert [i["name"] for i in body["items"]] == ["db1", "web1", "web2", "web3", "win1"]
        assert await world.count_targets() == 0
        assert await world.topics() == []
        assert WIN_PASSWORD not in response.text

    async def test_import_then_again_is_idempotent(self, world: World) -> None:
        first = (await run_import(world, INI)).json()
        assert first["summary"] == {"created": 5, "updated": 0, "unchanged": 0}
        targets = await listing(world)
        assert (targets["web2"]["host"], targets["web2"]["tags"], targets["web2"]["port"]) == (
            "10.0.1.1", ["prod", "web"], 22)
        assert (targets["db1"]["port"], targets["db1"]["username"]) == (2200, "postgres")
        win = targets["win1"]
        assert (win["protocol"], win["port"], win["has_credential"]) == ("winrm", 5986, True)
        events = await world.events()
        assert [e["type"] for e in events].count("target.created") == 5
        assert [e["type"] for e in events].count("credential.changed") == 1
        await world.drain()

        again = (await run_import(world, INI)).json()
        assert again["summary"] == {"created": 0, "updated": 0, "unchanged": 5}
        assert await world.topics() == []

    async def test_changes_are_planned_and_applied(self, world: World) -> None:
        await run_import(world, INI)
        await world.drain()
        changed = INI.replace("db1 ansible_host=10.0.2.1", "db1 ansible_host=10.0.2.9").replace(
            WIN_PASSWORD, "Another-Secret-99")
        plan = (await run_import(world, changed, dry_run="true")).json()
        items = {i["name"]: i for i in plan["items"]}
        assert items["db1"] == {"name": "db1", "action": "update", "changes": ["host"]}
        assert items["win1"] == {"name": "win1", "action": "update", "changes": ["credential"]}
        assert plan["summary"] == {"created": 0, "updated": 2, "unchanged": 3}
        applied = (await run_import(world, changed)).json()
        assert applied["summary"] == plan["summary"]
        assert (await listing(world))["db1"]["host"] == "10.0.2.9"
        kinds = sorted(e["type"] for e in await world.events())
        assert kinds == ["credential.changed", "target.updated"]

    async def test_yaml_and_csv(self, world: World) -> None:
        yaml_result = (await run_import(world, YAML)).json()
        assert (yaml_result["format"], yaml_result["summary"]["created"]) == ("yaml", 2)
        csv_result = (await run_import(world, CSV)).json()
        assert csv_result["format"] == "csv"
        assert csv_result["summary"] == {"created": 1, "updated": 1, "unchanged": 0}
        targets = await listing(world)
        assert targets["web1"]["tags"] == ["web"]
        assert (targets["win2"]["protocol"], targets["win2"]["port"]) == ("winrm", 5985)
        assert targets["web2"]["tags"] == ["prod", "web"]

    async def test_slices(self, world: World) -> None:
        total = 0
        for offset in range(0, 5, 2):
            body = (await run_import(world, INI, offset=offset, limit=2)).json()
            assert body["total"] == 5
            total += body["applied"]
            assert await world.count_targets() == total
        assert total == 5

    async def test_missing_user_uses_the_default_or_is_an_error(self, world: World) -> None:
        text = "[web]\nweb1 ansible_host=10.0.0.1\n"
        refused = await run_import(world, text)
        assert refused.status_code == 422
        assert "web1" in str(refused.json()["errors"])
        ok = await run_import(world, text, default_user="ops")
        assert ok.status_code == 200
        assert (await listing(world))["web1"]["username"] == "ops"

    @pytest.mark.parametrize("text", [
        "[web]\nweb1 ansible_host=-oProxyCommand=sh ansible_user=u\n",
        "[web]\nweb1 ansible_host=10.0.0.1 ansible_user=u ansible_port=70000\n",
        "[web]\nweb1 ansible_host=10.0.0.1 ansible_user=u ansible_port=0\n",
        "[web]\nweb1 ansible_host=10.0.0.1 ansible_user=u ansible_connection=local\n",
        "[web]\nweb1 ansible_host=169.254.169.254 ansible_user=u\n",
        "[web\nweb1\n",
        "name,host\n-rf,10.0.0.1\n",
        "all:\n  hosts: [not, a, mapping]\n",
        "ok1 ansible_host=10.0.0.1 ansible_user=u\nbad; ansible_user=u\n",
    ])
    async def test_any_error_stores_nothing(self, world: World, text: str) -> None:
        response = await run_import(world, text)
        assert response.status_code == 422, response.text
        assert response.json()["errors"]
        assert await world.count_targets() == 0
        assert await world.topics() == []

    async def test_loopback_in_a_file_is_refused_by_default(self, make_world: WorldFactory) -> None:
        async with make_world(allow_loopback=False) as strict:
            response = await run_import(strict, "h1 ansible_host=127.0.0.1 ansible_user=u\n")
            assert response.status_code == 422

    async def test_passwords_need_credentials_write(self, world: World) -> None:
        response = await run_import(world, INI, perms=["targets:read", "targets:write"])
        assert response.status_code == 403
        assert await world.count_targets() == 0
        viewer = await run_import(world, YAML, perms=world.viewer)
        assert viewer.status_code == 403

    async def test_not_utf8(self, world: World) -> None:
        response = await world.client.post("/targets/import", headers=world.auth(),
                                           content=b"\xff\xfe\x00bad")
        assert response.status_code == 422


class TestExport:
    @pytest.mark.parametrize("fmt", ["csv", "yaml", "ini"])
    async def test_export_round_trips_without_secrets(self, world: World, fmt: str) -> None:
        await run_import(world, INI)
        response = await world.client.get("/targets/export", headers=world.auth(world.viewer),
                                          params={"format": fmt})
        assert response.status_code == 200
        assert f'filename="targets.{fmt}"' in response.headers["content-disposition"]
        assert WIN_PASSWORD not in response.text
        assert "password" not in response.text.lower()
        await world.drain()
        again = (await run_import(world, response.text, format=fmt)).json()
        assert again["summary"] == {"created": 0, "updated": 0, "unchanged": 5}

    async def test_export_filters(self, world: World) -> None:
        await run_import(world, INI)
        response = await world.client.get("/targets/export", headers=world.auth(),
                                          params={"tag": "db"})
        lines = response.text.strip().splitlines()
        assert len(lines) == 2 and lines[1].startswith("db1,")
