"""Roles over HTTP."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from opsconductor_contracts.permissions import ALL_PERMISSIONS, BUILTIN_ROLES

if TYPE_CHECKING:
    from conftest import World


async def role_id(world: World, name: str) -> str:
    admin = await world.admin()
    response = await world.client.get("/roles", headers=world.auth(admin), params={"limit": 500})
    return next(r["id"] for r in response.json()["items"] if r["name"] == name)


class TestPermissions:
    async def test_lists_every_permission(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"])
        response = await world.client.get("/roles/permissions", headers=world.auth(viewer))
        assert response.status_code == 200
        assert response.json() == list(ALL_PERMISSIONS)


class TestList:
    async def test_built_in_roles_are_seeded(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.get("/roles", headers=world.auth(admin))
        assert response.status_code == 200
        roles = {r["name"]: r for r in response.json()["items"]}
        assert set(roles) == set(BUILTIN_ROLES)
        for name, permissions in BUILTIN_ROLES.items():
            assert roles[name]["permissions"] == sorted(permissions)
            assert roles[name]["builtin"] is True

    async def test_needs_users_read(self, world: World) -> None:
        operator = await world.user("olga", ["operator"])
        response = await world.client.get("/roles", headers=world.auth(operator))
        assert response.status_code == 403


class TestCreate:
    async def test_admin_creates_a_role(self, world: World) -> None:
        admin = await world.admin()
        await world.drain()
        response = await world.client.post("/roles", headers=world.auth(admin), json={
            "name": "Runner", "description": "Runs jobs",
            "permissions": ["jobs:run", "jobs:read", "jobs:run"]})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["name"] == "runner"
        assert body["permissions"] == ["jobs:read", "jobs:run"]
        assert body["builtin"] is False
        [event] = await world.events()
        assert event["type"] == "role.changed"
        assert event["data"]["change"] == "created"
        assert event["data"]["permissions"] == ["jobs:read", "jobs:run"]
        read = await world.client.get(f"/roles/{body['id']}", headers=world.auth(admin))
        assert read.json() == body

    async def test_cannot_create_a_role_with_permissions_you_lack(self, world: World) -> None:
        admin = await world.admin()
        created = await world.client.post("/roles", headers=world.auth(admin), json={
            "name": "role-admin", "permissions": ["roles:write", "users:read"]})
        assert created.status_code == 201
        author = await world.user("rita", ["role-admin"])
        await world.drain()
        response = await world.client.post("/roles", headers=world.auth(author), json={
            "name": "sneaky", "permissions": ["roles:write", "credentials:write"]})
        assert response.status_code == 403
        assert "credentials:write" in response.json()["detail"]
        assert await world.topics() == []
        allowed = await world.client.post("/roles", headers=world.auth(author), json={
            "name": "reader", "permissions": ["users:read"]})
        assert allowed.status_code == 201

    async def test_viewer_cannot_create(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"])
        response = await world.client.post("/roles", headers=world.auth(viewer),
                                           json={"name": "x", "permissions": []})
        assert response.status_code == 403

    async def test_duplicate_name_is_409(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.post("/roles", headers=world.auth(admin),
                                           json={"name": "Operator", "permissions": []})
        assert response.status_code == 409

    @pytest.mark.parametrize(("body", "field"), [
        ({"name": "x", "permissions": ["root:all"]}, "permissions"),
        ({"name": "x", "permissions": "jobs:run"}, "permissions"),
        ({"name": "x"}, "permissions"),
        ({"name": "has space", "permissions": []}, "name"),
        ({"name": "x", "permissions": [], "builtin": True}, "builtin"),
        ({"name": "x" * 65, "permissions": []}, "name"),
    ])
    async def test_invalid_input_is_422(self, world: World, body: dict, field: str) -> None:
        admin = await world.admin()
        response = await world.client.post("/roles", headers=world.auth(admin), json=body)
        assert response.status_code == 422
        assert field in response.json()["errors"]


class TestUpdate:
    async def test_rename_and_change_permissions(self, world: World) -> None:
        admin = await world.admin()
        created = (await world.client.post("/roles", headers=world.auth(admin), json={
            "name": "runner", "permissions": ["jobs:run"]})).json()
        await world.drain()
        response = await world.client.patch(f"/roles/{created['id']}", headers=world.auth(admin),
                                            json={"name": "executor",
                                                  "permissions": ["jobs:run", "jobs:read"]})
        assert response.status_code == 200
        assert response.json()["name"] == "executor"
        assert response.json()["permissions"] == ["jobs:read", "jobs:run"]
        [event] = await world.events()
        assert event["data"]["change"] == "updated"

    async def test_built_in_roles_keep_their_names(self, world: World) -> None:
        admin = await world.admin()
        rid = await role_id(world, "viewer")
        response = await world.client.patch(f"/roles/{rid}", headers=world.auth(admin),
                                            json={"name": "watcher"})
        assert response.status_code == 409

    async def test_admin_role_keeps_every_permission(self, world: World) -> None:
        admin = await world.admin()
        rid = await role_id(world, "admin")
        response = await world.client.patch(f"/roles/{rid}", headers=world.auth(admin),
                                            json={"permissions": ["users:read"]})
        assert response.status_code == 409
        described = await world.client.patch(f"/roles/{rid}", headers=world.auth(admin),
                                             json={"description": "The people in charge"})
        assert described.status_code == 200

    async def test_other_built_ins_may_be_tuned(self, world: World) -> None:
        admin = await world.admin()
        rid = await role_id(world, "viewer")
        perms = sorted([*BUILTIN_ROLES["viewer"], "audit:read"])
        response = await world.client.patch(f"/roles/{rid}", headers=world.auth(admin),
                                            json={"permissions": perms})
        assert response.status_code == 200
        assert response.json()["permissions"] == perms

    async def test_cannot_widen_a_role_beyond_your_permissions(self, world: World) -> None:
        admin = await world.admin()
        await world.client.post("/roles", headers=world.auth(admin), json={
            "name": "role-admin", "permissions": ["roles:write", "users:read"]})
        author = await world.user("rita", ["role-admin"])
        rid = await role_id(world, "viewer")
        response = await world.client.patch(f"/roles/{rid}", headers=world.auth(author),
                                            json={"permissions": ["users:read"]})
        assert response.status_code == 403  # viewer holds permissions rita lacks

    async def test_unknown_role_is_404(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.patch(f"/roles/{uuid.uuid4()}", headers=world.auth(admin),
                                            json={"description": "x"})
        assert response.status_code == 404


class TestDelete:
    async def test_delete_takes_the_role_from_its_holders(self, world: World) -> None:
        admin = await world.admin()
        created = (await world.client.post("/roles", headers=world.auth(admin), json={
            "name": "runner", "permissions": ["jobs:run"]})).json()
        holder = await world.user("hal", ["runner", "viewer"])
        await world.drain()
        response = await world.client.delete(f"/roles/{created['id']}", headers=world.auth(admin))
        assert response.status_code == 204
        gone = await world.client.get(f"/roles/{created['id']}", headers=world.auth(admin))
        assert gone.status_code == 404
        user = await world.client.get(f"/users/{holder['id']}", headers=world.auth(admin))
        assert user.json()["roles"] == ["viewer"]
        events = await world.events()
        assert sorted(e["data"].get("change", e["type"]) for e in events) == [
            "deleted", "revoked", "user.updated"]
        updated = next(e for e in events if e["type"] == "user.updated")
        assert updated["data"]["sessions_revoked"] is True

    async def test_built_in_roles_cannot_be_deleted(self, world: World) -> None:
        admin = await world.admin()
        for name in BUILTIN_ROLES:
            rid = await role_id(world, name)
            response = await world.client.delete(f"/roles/{rid}", headers=world.auth(admin))
            assert response.status_code == 409, name

    async def test_unknown_role_is_404(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.delete(f"/roles/{uuid.uuid4()}", headers=world.auth(admin))
        assert response.status_code == 404
