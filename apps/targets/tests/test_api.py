"""Targets over HTTP, as the gateway calls them (served without /api/v1)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import World, WorldFactory

PASSWORD = "Sup3r-Secret-Target-Passw0rd"
OPERATOR = ["targets:read", "targets:write", "credentials:write"]
VIEWER = ["targets:read"]


def is_problem(response: Any, status: int) -> bool:
    return (response.status_code == status
            and response.headers["content-type"].startswith("application/problem+json")
            and response.json()["status"] == status)


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path"), [
        ("GET", "/targets"), ("POST", "/targets"), ("GET", f"/targets/{uuid.uuid4()}"),
        ("PATCH", f"/targets/{uuid.uuid4()}"), ("DELETE", f"/targets/{uuid.uuid4()}"),
        ("PUT", f"/targets/{uuid.uuid4()}/credential"), ("POST", f"/targets/{uuid.uuid4()}/test"),
        ("POST", f"/targets/{uuid.uuid4()}/host-key"), ("GET", f"/targets/{uuid.uuid4()}/health"),
        ("POST", "/targets/import"), ("GET", "/targets/export"),
    ])
    async def test_no_token_is_401(self, world: World, method: str, path: str) -> None:
        response = await world.client.request(method, path)
        assert is_problem(response, 401)

    async def test_viewer_reads_but_cannot_write(self, world: World) -> None:
        target = await world.create()
        await world.drain()
        viewer = world.auth(VIEWER)
        assert (await world.client.get(f"/targets/{target['id']}", headers=viewer)).status_code == 200
        for method, path, body in (
                ("POST", "/targets", {"name": "x1", "host": "10.0.0.1", "username": "u"}),
                ("PATCH", f"/targets/{target['id']}", {"description": "mine"}),
                ("DELETE", f"/targets/{target['id']}", None),
                ("POST", f"/targets/{target['id']}/test", None),
                ("POST", f"/targets/{target['id']}/host-key", {"fingerprint": "SHA256:x"}),
                ("PUT", f"/targets/{target['id']}/credential",
                 {"type": "password", "password": PASSWORD})):
            response = await world.client.request(method, path, json=body, headers=viewer)
            assert is_problem(response, 403), (method, path)
        assert await world.topics() == []

    async def test_credentials_need_their_own_permission(self, world: World) -> None:
        no_creds = world.auth(["targets:read", "targets:write"])
        response = await world.client.post("/targets", headers=no_creds, json={
            "name": "web1", "host": "10.0.0.1", "username": "deploy",
            "credential": {"type": "password", "password": PASSWORD}})
        assert is_problem(response, 403)
        assert await world.count_targets() == 0
        target = await world.create(perms=["targets:read", "targets:write"])
        response = await world.client.put(f"/targets/{target['id']}/credential", headers=no_creds,
                                          json={"type": "password", "password": PASSWORD})
        assert is_problem(response, 403)

    async def test_no_read_permission_cannot_list(self, world: World) -> None:
        response = await world.client.get("/targets", headers=world.auth(["jobs:read"]))
        assert is_problem(response, 403)


class TestCreate:
    async def test_create_shows_no_secret(self, world: World) -> None:
        response = await world.client.post("/targets", headers=world.auth(OPERATOR), json={
            "name": "web-01", "host": "Web01.Example.com", "protocol": "ssh", "os": "debian 12",
            "tags": ["Prod", "web", "prod"], "description": "front end", "username": "deploy",
            "credential": {"type": "password", "password": PASSWORD}})
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == f"/targets/{body['id']}"
        assert body["name"] == "web-01"
        assert body["host"] == "web01.example.com"
        assert body["port"] == 22
        assert body["tags"] == ["prod", "web"]
        assert body["has_credential"] is True
        assert body["credential_type"] == "password"
        assert body["status"] == "unknown"
        assert body["host_key_fingerprint"] is None
        assert body["winrm"] is None
        assert body["created_at"].endswith("Z")
        assert PASSWORD not in response.text
        assert "password" not in body and "credential" not in body

        events = await world.events()
        assert [e["type"] for e in events] == ["target.created", "credential.changed"]
        assert events[0]["data"] == {
            "target_id": body["id"], "name": "web-01", "host": "web01.example.com", "port": 22,
            "protocol": "ssh", "tags": ["prod", "web"], "has_credential": True}
        assert events[0]["actor"] == world.user_id and events[0]["resourceid"] == body["id"]
        assert events[1]["data"]["change"] == "set" and events[1]["data"]["version"] == 1
        assert PASSWORD not in str(events)

    async def test_winrm_defaults(self, world: World) -> None:
        body = await world.create(name="win1", protocol="winrm", host="10.0.0.7",
                                  username="Administrator")
        assert body["port"] == 5986
        assert body["winrm"] == {"transport": "ntlm", "scheme": "https", "verify_tls": True}

    async def test_ipv6_and_explicit_port(self, world: World) -> None:
        body = await world.create(host="[2001:DB8::5]", port=2222)
        assert (body["host"], body["port"]) == ("2001:db8::5", 2222)

    async def test_pinned_key_at_creation(self, world: World) -> None:
        fingerprint = "SHA256:" + "k" * 43
        body = await world.create(host_key=fingerprint)
        assert body["host_key_fingerprint"] == fingerprint
        assert "host_key.pinned" in await world.topics()

    async def test_duplicate_name_is_409_case_insensitively(self, world: World) -> None:
        await world.create(name="db-01")
        response = await world.client.post("/targets", headers=world.auth(), json={
            "name": "DB-01", "host": "10.0.0.2", "username": "u"})
        assert is_problem(response, 409)
        assert await world.count_targets() == 1


class TestBadInput:
    @pytest.mark.parametrize(("patch", "field"), [
        ({"host": "-oProxyCommand=sh"}, "host"),
        ({"host": "web01; reboot"}, "host"),
        ({"host": "a b"}, "host"),
        ({"host": "$(curl evil)"}, "host"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": "22"}, "port"),
        ({"protocol": "telnet"}, "protocol"),
        ({"name": "-rf"}, "name"),
        ({"name": ""}, "name"),
        ({"tags": ["bad tag"]}, "tags"),
        ({"username": "-oX"}, "username"),
        ({"username": "a;b"}, "username"),
        ({"is_root": True}, "is_root"),
        ({"credential": {"type": "password"}}, "credential"),
        ({"credential": {"type": "private_key", "private_key": "not a key"}}, "credential"),
        ({"credential": {"type": "password", "password": "x", "private_key": "y"}}, "credential"),
        ({"host_key": "SHA256:short"}, "host_key"),
        ({"winrm": {"transport": "ntlm"}}, "body"),
        ({"protocol": "winrm", "credential": {"type": "private_key", "private_key":
          "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"}}, "body"),
        ({"protocol": "winrm", "winrm": {"transport": "basic", "scheme": "http"}}, "winrm.scheme"),
    ])
    async def test_422_and_nothing_stored(self, world: World, patch: dict[str, Any],
                                          field: str) -> None:
        body = {"name": "web1", "host": "10.0.0.1", "username": "deploy", **patch}
        response = await world.client.post("/targets", headers=world.auth(), json=body)
        assert is_problem(response, 422), response.text
        errors = response.json()["errors"]
        assert any(key.startswith(field) for key in errors), errors
        assert await world.count_targets() == 0
        assert await world.topics() == []

    async def test_malformed_private_key_is_422_without_echo(self, world: World) -> None:
        fake = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-garbage-garbage\n"
                "-----END OPENSSH PRIVATE KEY-----\n")
        response = await world.client.post("/targets", headers=world.auth(), json={
            "name": "web1", "host": "10.0.0.1", "username": "deploy",
            "credential": {"type": "private_key", "private_key": fake}})
        assert is_problem(response, 422)
        assert "credential.private_key" in response.json()["errors"]
        assert "b3BlbnNzaC1rZXktdjEAAAAA" not in response.text
        assert await world.count_targets() == 0

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "169.254.169.254",
                                      "fe80::1", "0.0.0.0"])
    async def test_loopback_and_metadata_are_refused_by_default(
            self, make_world: WorldFactory, host: str) -> None:
        async with make_world(allow_loopback=False) as strict:
            response = await strict.client.post("/targets", headers=strict.auth(), json={
                "name": "sneaky", "host": host, "username": "u"})
            assert is_problem(response, 422)
            assert "host" in response.json()["errors"]
            assert await strict.count_targets() == 0
            ok = await strict.client.post("/targets", headers=strict.auth(), json={
                "name": "lan", "host": "192.168.10.4", "username": "u"})
            assert ok.status_code == 201

    async def test_a_10_mb_body_is_413(self, world: World) -> None:
        huge = b'{"name": "x", "host": "10.0.0.1", "username": "' + b"a" * (10 * 1024 * 1024) + b'"}'
        response = await world.client.post("/targets", headers={**world.auth(),
                                           "content-type": "application/json"}, content=huge)
        assert is_problem(response, 413)
        assert await world.count_targets() == 0

    async def test_not_a_uuid_is_422(self, world: World) -> None:
        response = await world.client.get("/targets/not-a-uuid", headers=world.auth())
        assert is_problem(response, 422)


class TestRead:
    async def test_unknown_id_is_404(self, world: World) -> None:
        for method in ("GET", "PATCH", "DELETE"):
            response = await world.client.request(
                method, f"/targets/{uuid.uuid4()}", headers=world.auth(),
                json={"description": "x"} if method == "PATCH" else None)
            assert is_problem(response, 404), method

    async def test_filters(self, world: World) -> None:
        await world.create(name="web1", tags=["web", "prod"], host="10.0.1.1")
        await world.create(name="web2", tags=["web"], host="10.0.1.2", description="staging box")
        await world.create(name="win1", tags=["prod"], protocol="winrm", host="10.0.2.1")

        async def names(**params: Any) -> list[str]:
            response = await world.client.get("/targets", headers=world.auth(VIEWER),
                                              params=params)
            assert response.status_code == 200, response.text
            return sorted(t["name"] for t in response.json()["items"])

        assert await names() == ["web1", "web2", "win1"]
        assert await names(tag="web") == ["web1", "web2"]
        assert await names(tag=["web", "prod"]) == ["web1"]
        assert await names(tag="PROD") == ["web1", "win1"]
        assert await names(protocol="winrm") == ["win1"]
        assert await names(q="STAGING") == ["web2"]
        assert await names(q="10.0.1.") == ["web1", "web2"]
        assert await names(q="%") == []
        assert await names(status="unknown") == ["web1", "web2", "win1"]
        assert await names(status="healthy") == []
        bad = await world.client.get("/targets", headers=world.auth(), params={"status": "meh"})
        assert is_problem(bad, 422)

    async def test_keyset_pagination(self, world: World) -> None:
        for n in range(7):
            await world.create(name=f"n{n}")
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await world.client.get("/targets", headers=world.auth(),
                                           params=params)).json()
            seen += [t["name"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"n{n}" for n in range(7)]
        assert is_problem(await world.client.get("/targets", headers=world.auth(),
                                                 params={"limit": 501}), 422)
        assert is_problem(await world.client.get("/targets", headers=world.auth(),
                                                 params={"cursor": "garbage"}), 422)


class TestUpdate:
    async def test_patch_changes_only_what_is_given(self, world: World) -> None:
        target = await world.create(name="web1", tags=["web"], description="a")
        await world.drain()
        response = await world.client.patch(f"/targets/{target['id']}", headers=world.auth(),
                                            json={"host": "10.9.9.9", "tags": ["web", "eu"]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["host"], body["tags"], body["description"]) == ("10.9.9.9", ["eu", "web"], "a")
        events = await world.events()
        assert [e["type"] for e in events] == ["target.updated"]
        assert events[0]["data"]["changed"] == ["host", "tags"]

    async def test_nothing_changed_emits_nothing(self, world: World) -> None:
        target = await world.create(name="web1", description="a")
        await world.drain()
        response = await world.client.patch(f"/targets/{target['id']}", headers=world.auth(),
                                            json={"description": "a", "name": "web1"})
        assert response.status_code == 200
        assert await world.topics() == []

    async def test_switching_protocol_moves_the_default_port(self, world: World) -> None:
        target = await world.create()
        response = await world.client.patch(f"/targets/{target['id']}", headers=world.auth(),
                                            json={"protocol": "winrm"})
        body = response.json()
        assert (body["protocol"], body["port"], body["winrm"]["transport"]) == ("winrm", 5986,
                                                                               "ntlm")

    async def test_rename_onto_another_is_409(self, world: World) -> None:
        await world.create(name="a1")
        b = await world.create(name="b1")
        response = await world.client.patch(f"/targets/{b['id']}", headers=world.auth(),
                                            json={"name": "A1"})
        assert is_problem(response, 409)

    @pytest.mark.parametrize("patch", [{"host": "-oProxyCommand=sh"}, {"port": 0},
                                       {"port": 70000}, {"name": None}, {"tags": None},
                                       {"winrm": {"transport": "ntlm"}}])
    async def test_bad_patch_changes_nothing(self, world: World, patch: dict[str, Any]) -> None:
        target = await world.create(name="web1")
        await world.drain()
        response = await world.client.patch(f"/targets/{target['id']}", headers=world.auth(),
                                            json=patch)
        assert is_problem(response, 422), response.text
        again = (await world.client.get(f"/targets/{target['id']}", headers=world.auth())).json()
        assert again == target
        assert await world.topics() == []

    async def test_loopback_host_refused_on_update_too(self, make_world: WorldFactory) -> None:
        async with make_world(allow_loopback=False) as strict:
            target = await strict.create(host="10.0.0.1")
            response = await strict.client.patch(f"/targets/{target['id']}",
                                                 headers=strict.auth(), json={"host": "127.0.0.2"})
            assert is_problem(response, 422)


class TestDelete:
    async def test_delete(self, world: World) -> None:
        target = await world.create(credential={"type": "password", "password": PASSWORD})
        await world.drain()
        response = await world.client.delete(f"/targets/{target['id']}", headers=world.auth())
        assert response.status_code == 204
        assert is_problem(await world.client.get(f"/targets/{target['id']}",
                                                 headers=world.auth()), 404)
        assert await world.credential_row(target["id"]) is None
        events = await world.events()
        assert [e["type"] for e in events] == ["target.deleted"]
        assert events[0]["data"] == {"target_id": target["id"], "name": target["name"]}
