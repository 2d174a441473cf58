"""Users over HTTP, as the gateway would call them (served without /api/v1)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from opsconductor_contracts.permissions import ALL_PERMISSIONS, BUILTIN_ROLES
from opsconductor_core.tokens import generate_private_pem, new_access_claims, sign, signing_key

if TYPE_CHECKING:
    from conftest import World

GOOD = "a perfectly good password"


async def make_role(world: World, name: str, permissions: list[str]) -> dict:
    admin = await world.admin()
    response = await world.client.post("/roles", headers=world.auth(admin),
                                       json={"name": name, "permissions": permissions})
    assert response.status_code == 201, response.text
    return response.json()


async def user_manager(world: World) -> dict:
    """Can manage users and roles, but holds none of the operational permissions."""
    await make_role(world, "user-manager", ["users:read", "users:write", "roles:write"])
    return await world.user("manager", ["user-manager"])


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path"), [
        ("GET", "/users/me"), ("GET", "/users"), ("POST", "/users"),
        ("GET", f"/users/{uuid.uuid4()}"), ("DELETE", f"/users/{uuid.uuid4()}"),
        ("GET", "/roles"), ("GET", "/roles/permissions"),
    ])
    async def test_no_token_is_401(self, world: World, method: str, path: str) -> None:
        response = await world.client.request(method, path)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_token_signed_by_another_key_is_401(self, world: World) -> None:
        admin = await world.admin()
        claims = new_access_claims(subject=admin["id"], issuer=world.settings.jwt_issuer,
                                   audience=world.settings.jwt_audience, ttl_s=60,
                                   extra={"perms": list(ALL_PERMISSIONS)})
        forged = sign(signing_key(generate_private_pem()), claims)
        response = await world.client.get("/users", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401

    async def test_token_of_a_deleted_account_cannot_act(self, world: World) -> None:
        ghost = {"id": str(uuid.uuid4()), "username": "ghost", "roles": ["admin"],
                 "permissions": list(ALL_PERMISSIONS)}
        response = await world.client.post("/users", headers=world.auth(ghost),
                                           json={"username": "x" * 5, "password": world.password})
        assert response.status_code == 401


class TestMe:
    async def test_me_shows_roles_and_permissions(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"], email="vera@example.com")
        response = await world.client.get("/users/me", headers=world.auth(viewer))
        assert response.status_code == 200
        body = response.json()
        assert body["id"] == viewer["id"]
        assert body["username"] == "vera"
        assert body["email"] == "vera@example.com"
        assert body["roles"] == ["viewer"]
        assert body["permissions"] == sorted(BUILTIN_ROLES["viewer"])
        assert body["last_login_at"] is None
        world.assert_no_secret(body, world.password)


class TestCreate:
    async def test_admin_creates_a_user(self, world: World) -> None:
        admin = await world.admin()
        await world.drain()
        response = await world.client.post("/users", headers=world.auth(admin), json={
            "username": "Alice.Ops", "password": world.password, "email": "alice@example.com",
            "full_name": "Alice Ops", "roles": ["operator", "viewer"]})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["username"] == "alice.ops"
        assert body["roles"] == ["operator", "viewer"]
        assert set(body["permissions"]) == set(BUILTIN_ROLES["operator"]) | set(
            BUILTIN_ROLES["viewer"])
        assert body["active"] is True
        assert body["login_count"] == 0
        assert body["created_at"].endswith("Z")
        uuid.UUID(body["id"])
        world.assert_no_secret(body, world.password)

        events = await world.events()
        assert [e["type"] for e in events] == ["user.created", "role.changed", "role.changed"]
        created = events[0]
        assert created["data"] == {"user_id": body["id"], "username": "alice.ops",
                                   "roles": ["operator", "viewer"]}
        assert created["actor"] == admin["id"]
        assert created["resourceid"] == body["id"]
        assert {e["data"]["change"] for e in events[1:]} == {"granted"}
        world.assert_no_secret(events, world.password)

        listed = await world.client.get("/users", headers=world.auth(admin),
                                        params={"q": "alice"})
        assert [u["username"] for u in listed.json()["items"]] == ["alice.ops"]

    async def test_viewer_cannot_create(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"])
        await world.drain()
        response = await world.client.post("/users", headers=world.auth(viewer),
                                           json={"username": "bob", "password": world.password})
        assert response.status_code == 403
        assert await world.topics() == []

    async def test_operator_cannot_grant_themselves_admin(self, world: World) -> None:
        operator = await world.user("olga", ["operator"])
        response = await world.client.patch(f"/users/{operator['id']}",
                                            headers=world.auth(operator),
                                            json={"roles": ["operator", "admin"]})
        assert response.status_code == 403
        me = await world.client.get("/users/me", headers=world.auth(operator))
        assert me.json()["roles"] == ["operator"]

    async def test_user_manager_cannot_grant_roles_beyond_their_own(self, world: World) -> None:
        manager = await user_manager(world)
        await world.drain()
        headers = world.auth(manager)
        for roles in (["admin"], ["operator"]):
            response = await world.client.post("/users", headers=headers, json={
                "username": "eve", "password": world.password, "roles": roles})
            assert response.status_code == 403, roles
        response = await world.client.patch(f"/users/{manager['id']}", headers=headers,
                                            json={"roles": ["user-manager", "admin"]})
        assert response.status_code == 403
        assert await world.topics() == []
        # Within their own permissions they may create users.
        ok = await world.client.post("/users", headers=headers, json={
            "username": "eve", "password": world.password, "roles": ["user-manager"]})
        assert ok.status_code == 201

    async def test_current_permissions_count_not_the_token(self, world: World) -> None:
        """A token still claiming admin powers does not help a user who was demoted."""
        demoted = await world.user("dora", ["viewer"])
        headers = world.auth(demoted, roles=["admin"], perms=list(ALL_PERMISSIONS))
        response = await world.client.post("/users", headers=headers, json={
            "username": "mallory", "password": world.password, "roles": ["admin"]})
        assert response.status_code == 403

    @pytest.mark.parametrize(("body", "field"), [
        ({"username": 42, "password": GOOD}, "username"),
        ({"username": "bob", "password": GOOD, "roles": "admin"}, "roles"),
        ({"username": "bob", "password": GOOD, "is_admin": True}, "is_admin"),
        ({"username": "bob", "password": "short"}, "password"),
        ({"username": "bob-the-builder", "password": "Bob-The-Builder"}, "password"),
        ({"username": "bob", "password": "x" * 257}, "password"),
        ({"username": "b", "password": GOOD}, "username"),
        ({"username": "bob smith", "password": GOOD}, "username"),
        ({"username": "bob", "password": GOOD, "email": "not-an-email"}, "email"),
        ({"username": "bob", "password": GOOD, "roles": ["no-such-role"]}, "roles"),
        ({"password": GOOD}, "username"),
    ])
    async def test_invalid_input_is_422(self, world: World, body: dict, field: str) -> None:
        admin = await world.admin()
        response = await world.client.post("/users", headers=world.auth(admin), json=body)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert field in problem["errors"]
        world.assert_no_secret(problem, world.password, "Bob-The-Builder")

    async def test_duplicate_username_is_409_whatever_the_case(self, world: World) -> None:
        admin = await world.admin()
        await world.user("carol", ["viewer"])
        await world.drain()
        response = await world.client.post("/users", headers=world.auth(admin),
                                           json={"username": "CAROL", "password": world.password})
        assert response.status_code == 409
        assert await world.topics() == []


class TestList:
    async def test_keyset_pages_cover_everyone_once(self, world: World) -> None:
        admin = await world.admin()
        for i in range(5):
            await world.user(f"user{i}", ["viewer"])
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            response = await world.client.get("/users", headers=world.auth(admin), params=params)
            assert response.status_code == 200
            page = response.json()
            assert len(page["items"]) <= 2
            seen += [u["username"] for u in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(["admin"] + [f"user{i}" for i in range(5)])
        assert len(seen) == len(set(seen))

    async def test_filters(self, world: World) -> None:
        admin = await world.admin()
        headers = world.auth(admin)
        await world.user("op1", ["operator"], email="first@corp.example")
        op2 = await world.user("op2", ["operator"])
        await world.user("viewer1", ["viewer"])
        await world.client.patch(f"/users/{op2['id']}", headers=headers, json={"active": False})

        async def names(**params: str) -> list[str]:
            response = await world.client.get("/users", headers=headers, params=params)
            assert response.status_code == 200
            return sorted(u["username"] for u in response.json()["items"])

        assert await names(role="operator") == ["op1", "op2"]
        assert await names(role="operator", active="true") == ["op1"]
        assert await names(active="false") == ["op2"]
        assert await names(q="CORP.example") == ["op1"]
        assert await names(q="%") == []

    async def test_reader_permission_needed(self, world: World) -> None:
        operator = await world.user("olga", ["operator"])
        response = await world.client.get("/users", headers=world.auth(operator))
        assert response.status_code == 403

    @pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"cursor": "garbage"},
                                        {"active": "maybe"}])
    async def test_bad_query_is_422(self, world: World, params: dict) -> None:
        admin = await world.admin()
        response = await world.client.get("/users", headers=world.auth(admin), params=params)
        assert response.status_code == 422


class TestGet:
    async def test_reader_sees_a_user_without_secrets(self, world: World) -> None:
        auditor = await world.user("audrey", ["auditor"])
        target = await world.user("tom", ["operator"])
        response = await world.client.get(f"/users/{target['id']}", headers=world.auth(auditor))
        assert response.status_code == 200
        body = response.json()
        assert body["username"] == "tom"
        assert set(body) >= {"roles", "permissions", "active", "last_login_at",
                             "last_action_at", "login_count", "created_at"}
        world.assert_no_secret(body, world.password)

    async def test_anyone_sees_themselves_but_not_others(self, world: World) -> None:
        operator = await world.user("olga", ["operator"])
        other = await world.user("tom", ["viewer"])
        mine = await world.client.get(f"/users/{operator['id']}", headers=world.auth(operator))
        assert mine.status_code == 200
        theirs = await world.client.get(f"/users/{other['id']}", headers=world.auth(operator))
        assert theirs.status_code == 403

    async def test_unknown_id_is_404_and_bad_id_422(self, world: World) -> None:
        admin = await world.admin()
        missing = await world.client.get(f"/users/{uuid.uuid4()}", headers=world.auth(admin))
        assert missing.status_code == 404
        bad = await world.client.get("/users/not-a-uuid", headers=world.auth(admin))
        assert bad.status_code == 422


class TestUpdate:
    async def test_admin_changes_profile_and_roles(self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["viewer"])
        await world.drain()
        response = await world.client.patch(f"/users/{target['id']}", headers=world.auth(admin),
                                            json={"email": "tom@example.com",
                                                  "full_name": "Tom T", "roles": ["operator"]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["email"] == "tom@example.com"
        assert body["full_name"] == "Tom T"
        assert body["roles"] == ["operator"]
        events = await world.events()
        updated = [e for e in events if e["type"] == "user.updated"]
        assert len(updated) == 1
        assert updated[0]["data"]["changed"] == ["email", "full_name", "roles"]
        assert updated[0]["data"]["sessions_revoked"] is True  # viewer was taken away
        changes = sorted((e["data"]["name"], e["data"]["change"]) for e in events
                         if e["type"] == "role.changed")
        assert changes == [("operator", "granted"), ("viewer", "revoked")]

    async def test_adding_a_role_keeps_sessions(self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["viewer"])
        await world.drain()
        response = await world.client.patch(f"/users/{target['id']}", headers=world.auth(admin),
                                            json={"roles": ["viewer", "auditor"]})
        assert response.status_code == 200
        updated = [e for e in await world.events() if e["type"] == "user.updated"]
        assert updated[0]["data"]["sessions_revoked"] is False

    async def test_no_change_publishes_nothing(self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["viewer"])
        await world.drain()
        response = await world.client.patch(f"/users/{target['id']}", headers=world.auth(admin),
                                            json={"roles": ["viewer"]})
        assert response.status_code == 200
        assert await world.topics() == []

    async def test_user_edits_own_name_but_not_own_roles(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"])
        headers = world.auth(viewer)
        ok = await world.client.patch(f"/users/{viewer['id']}", headers=headers,
                                      json={"full_name": "Vera V"})
        assert ok.status_code == 200
        assert ok.json()["full_name"] == "Vera V"
        denied = await world.client.patch(f"/users/{viewer['id']}", headers=headers,
                                          json={"roles": []})
        assert denied.status_code == 403

    async def test_disabling_ends_sessions_and_blocks_login(self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["viewer"])
        await world.drain()
        response = await world.client.patch(f"/users/{target['id']}", headers=world.auth(admin),
                                            json={"active": False})
        assert response.status_code == 200
        assert response.json()["active"] is False
        [event] = await world.events()
        assert event["data"]["changed"] == ["active"]
        assert event["data"]["sessions_revoked"] is True
        login = await world.client.post("/internal/credentials/verify",
                                        json={"username": "tom", "password": world.password})
        assert login.status_code == 401
        # A disabled user's still-valid token no longer acts.
        me = await world.client.get("/users/me", headers=world.auth(target))
        assert me.status_code == 401

    async def test_cannot_disable_yourself(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.patch(f"/users/{admin['id']}", headers=world.auth(admin),
                                            json={"active": False})
        assert response.status_code == 409

    async def test_last_admin_keeps_the_role(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.patch(f"/users/{admin['id']}", headers=world.auth(admin),
                                            json={"roles": ["viewer"]})
        assert response.status_code == 409
        # With a second admin, the first may step down.
        await world.user("second", ["admin"])
        response = await world.client.patch(f"/users/{admin['id']}", headers=world.auth(admin),
                                            json={"roles": ["viewer"]})
        assert response.status_code == 200

    async def test_cannot_take_over_a_more_powerful_user(self, world: World) -> None:
        manager = await user_manager(world)
        admin = await world.admin()
        await world.drain()
        headers = world.auth(manager)
        for body in ({"email": "mine@evil.example"}, {"active": False}, {"roles": ["viewer"]}):
            response = await world.client.patch(f"/users/{admin['id']}", headers=headers,
                                                json=body)
            assert response.status_code == 403, body
        reset = await world.client.post(f"/users/{admin['id']}/password", headers=headers,
                                        json={"new_password": "taken-over-password"})
        assert reset.status_code == 403
        assert await world.topics() == []
        login = await world.client.post("/internal/credentials/verify", json={
            "username": "admin", "password": world.admin_password})
        assert login.status_code == 200

    @pytest.mark.parametrize("body", [{"roles": None}, {"active": None}, {"active": "no"},
                                      {"username": "renamed"}, {"roles": ["ghost-role"]}])
    async def test_invalid_update_is_422(self, world: World, body: dict) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["viewer"])
        response = await world.client.patch(f"/users/{target['id']}", headers=world.auth(admin),
                                            json=body)
        assert response.status_code == 422

    async def test_unknown_user_is_404(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.patch(f"/users/{uuid.uuid4()}", headers=world.auth(admin),
                                            json={"full_name": "Nobody"})
        assert response.status_code == 404


class TestDelete:
    async def test_admin_deletes_a_user(self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["viewer"])
        await world.drain()
        response = await world.client.delete(f"/users/{target['id']}", headers=world.auth(admin))
        assert response.status_code == 204
        assert response.content == b""
        again = await world.client.get(f"/users/{target['id']}", headers=world.auth(admin))
        assert again.status_code == 404
        [event] = await world.events()
        assert event["type"] == "user.deleted"
        assert event["data"] == {"user_id": target["id"], "username": "tom"}
        # The name is free again.
        await world.user("tom", ["viewer"])

    async def test_cannot_delete_yourself(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.delete(f"/users/{admin['id']}", headers=world.auth(admin))
        assert response.status_code == 409

    async def test_last_active_admin_cannot_be_deleted(self, world: World) -> None:
        admin = await world.admin()
        # Holds every permission (so may act on admin) without being an admin itself.
        await make_role(world, "everything", list(ALL_PERMISSIONS))
        root = await world.user("root", ["everything"])
        response = await world.client.delete(f"/users/{admin['id']}", headers=world.auth(root))
        assert response.status_code == 409
        disable = await world.client.patch(f"/users/{admin['id']}", headers=world.auth(root),
                                           json={"active": False})
        assert disable.status_code == 409

    async def test_viewer_and_manager_cannot_delete_admin(self, world: World) -> None:
        manager = await user_manager(world)
        viewer = await world.user("vera", ["viewer"])
        admin = await world.admin()
        for actor in (viewer, manager):
            response = await world.client.delete(f"/users/{admin['id']}",
                                                 headers=world.auth(actor))
            assert response.status_code == 403

    async def test_unknown_user_is_404(self, world: World) -> None:
        admin = await world.admin()
        response = await world.client.delete(f"/users/{uuid.uuid4()}", headers=world.auth(admin))
        assert response.status_code == 404


class TestPassword:
    async def test_own_password_needs_the_current_one(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"])
        headers = world.auth(viewer)
        url = f"/users/{viewer['id']}/password"
        new = "a brand new passphrase"
        missing = await world.client.post(url, headers=headers, json={"new_password": new})
        assert missing.status_code == 422
        assert "current_password" in missing.json()["errors"]
        wrong = await world.client.post(url, headers=headers, json={
            "current_password": "not my password", "new_password": new})
        assert wrong.status_code == 422
        await world.drain()
        ok = await world.client.post(url, headers=headers, json={
            "current_password": world.password, "new_password": new})
        assert ok.status_code == 204
        [event] = await world.events()
        assert event["data"]["changed"] == ["password"]
        assert event["data"]["sessions_revoked"] is True
        world.assert_no_secret(event, world.password, new)

        old = await world.client.post("/internal/credentials/verify",
                                      json={"username": "vera", "password": world.password})
        assert old.status_code == 401
        fresh = await world.client.post("/internal/credentials/verify",
                                        json={"username": "vera", "password": new})
        assert fresh.status_code == 200

    async def test_admin_resets_anothers_password(self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("tom", ["operator"])
        response = await world.client.post(f"/users/{target['id']}/password",
                                           headers=world.auth(admin),
                                           json={"new_password": "reset by the admin"})
        assert response.status_code == 204
        row = await world.user_row(target["id"])
        assert row is not None and row.password_changed_at.isoformat() > target["created_at"][:19]

    @pytest.mark.parametrize(("password", "message_part"), [
        ("too-short", "at least 12"), ("x" * 300, "at most 256"), ("TOM-THE-TESTER", "username")])
    async def test_policy(self, world: World, password: str, message_part: str) -> None:
        admin = await world.admin()
        target = await world.user("tom-the-tester", ["viewer"])
        response = await world.client.post(f"/users/{target['id']}/password",
                                           headers=world.auth(admin),
                                           json={"new_password": password})
        assert response.status_code == 422
        assert message_part in response.json()["errors"]["new_password"]

    async def test_others_need_users_write(self, world: World) -> None:
        viewer = await world.user("vera", ["viewer"])
        other = await world.user("tom", ["viewer"])
        response = await world.client.post(f"/users/{other['id']}/password",
                                           headers=world.auth(viewer),
                                           json={"new_password": "a brand new passphrase"})
        assert response.status_code == 403


class TestSecretsNeverLeave:
    async def test_no_password_or_hash_in_any_answer_or_event(self, world: World) -> None:
        admin = await world.admin()
        headers = world.auth(admin)
        first, second = "first secret passphrase", "second secret passphrase"
        bodies: list[object] = []

        created = await world.client.post("/users", headers=headers, json={
            "username": "sam", "password": first, "roles": ["viewer"]})
        bodies.append(created.json())
        sam = created.json()
        for response in (
            await world.client.get("/users", headers=headers),
            await world.client.get(f"/users/{sam['id']}", headers=headers),
            await world.client.patch(f"/users/{sam['id']}", headers=headers,
                                     json={"full_name": "Sam"}),
            await world.client.post("/internal/credentials/verify",
                                    json={"username": "sam", "password": first}),
            await world.client.post("/internal/credentials/verify",
                                    json={"username": "sam", "password": second}),
            await world.client.get(f"/internal/users/{sam['id']}/identity"),
            await world.client.get("/users/me", headers=world.auth(sam)),
        ):
            bodies.append(response.json())
        changed = await world.client.post(f"/users/{sam['id']}/password", headers=headers,
                                          json={"new_password": second})
        assert changed.status_code == 204 and changed.content == b""
        bodies.append(await world.events())
        world.assert_no_secret(bodies, first, second, world.admin_password)
