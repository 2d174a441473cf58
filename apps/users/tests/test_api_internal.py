"""Service-to-service routes, through the same client the auth service uses."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import TYPE_CHECKING

from opsconductor_contracts.clients.users import UsersClient
from opsconductor_contracts.permissions import BUILTIN_ROLES
from opsconductor_users.passwords import Passwords

if TYPE_CHECKING:
    from conftest import World


def client_for(world: World) -> UsersClient:
    world.runtime.mount("users", world.app)
    return UsersClient(world.runtime)


class TestVerifyCredentials:
    async def test_right_password_returns_the_identity(self, world: World) -> None:
        user = await world.user("olga", ["operator"])
        verified = await client_for(world).verify_credentials("OLGA", world.password)
        assert verified is not None
        assert verified.user_id == user["id"]
        assert verified.username == "olga"
        assert verified.roles == ["operator"]
        assert verified.permissions == sorted(BUILTIN_ROLES["operator"])
        assert verified.active is True

    async def test_unknown_user_wrong_password_and_disabled_are_all_401(
            self, world: World) -> None:
        admin = await world.admin()
        target = await world.user("olga", ["operator"])
        await world.client.patch(f"/users/{target['id']}", headers=world.auth(admin),
                                 json={"active": False})
        for username, password in (("nobody", world.password), ("admin", "wrong password!"),
                                   ("olga", world.password)):
            response = await world.client.post("/internal/credentials/verify",
                                               json={"username": username, "password": password})
            assert response.status_code == 401, username
            assert response.json()["detail"] == "Invalid username or password"
        assert await client_for(world).verify_credentials("nobody", "whatever") is None

    async def test_unknown_user_and_wrong_password_take_alike(self, world: World) -> None:
        # A cost high enough that hashing, not HTTP, dominates each check.
        world.app.state.passwords = Passwords(time_cost=2, memory_cost=8192, parallelism=1)
        world.app.state.passwords.warm()
        await world.user("olga", ["operator"])

        async def timed(username: str) -> float:
            started = time.perf_counter()
            response = await world.client.post("/internal/credentials/verify", json={
                "username": username, "password": "definitely not it"})
            assert response.status_code == 401
            return time.perf_counter() - started

        unknown: list[float] = []
        wrong: list[float] = []
        for _ in range(9):
            unknown.append(await timed("nobody-at-all"))
            wrong.append(await timed("olga"))
        ratio = statistics.median(unknown) / statistics.median(wrong)
        assert 0.5 <= ratio <= 2.0, (unknown, wrong)

    async def test_rehashes_when_the_cost_changed(self, world: World) -> None:
        await world.user("olga", ["operator"])
        before = await world.user_row((await client_for(world).verify_credentials(
            "olga", world.password)).user_id)  # type: ignore[union-attr]
        assert before is not None
        world.app.state.passwords = Passwords(time_cost=2, memory_cost=128, parallelism=1)
        verified = await client_for(world).verify_credentials("olga", world.password)
        assert verified is not None
        after = await world.user_row(verified.user_id)
        assert after is not None
        assert after.password_hash != before.password_hash
        assert "t=2" in after.password_hash
        assert await client_for(world).verify_credentials("olga", world.password) is not None

    async def test_unknown_fields_are_422(self, world: World) -> None:
        response = await world.client.post("/internal/credentials/verify", json={
            "username": "admin", "password": world.admin_password, "otp": "123"})
        assert response.status_code == 422
        world.assert_no_secret(response.json(), world.admin_password)


class TestIdentity:
    async def test_identity_of_a_user(self, world: World) -> None:
        user = await world.user("aud", ["auditor"])
        identity = await client_for(world).get_identity(user["id"])
        assert identity is not None
        assert identity.username == "aud"
        assert identity.roles == ["auditor"]
        assert identity.permissions == sorted(BUILTIN_ROLES["auditor"])

    async def test_unknown_or_malformed_id_is_none(self, world: World) -> None:
        client = client_for(world)
        assert await client.get_identity(str(uuid.uuid4())) is None
        assert await client.get_identity("not-a-uuid") is None
