"""Credentials: write-only, encrypted at rest, bound to their row, rotated, executor-only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
import pytest
from sqlalchemy import update

from opsconductor_contracts.clients.targets import TargetsClient
from opsconductor_contracts.components import CREDENTIAL_MASTER_KEY_SECRET
from opsconductor_core.problems import Forbidden
from opsconductor_runtime.embedded import EmbeddedHost
from opsconductor_targets.crypto import CredentialSecret, seal
from opsconductor_targets.keyring import Keyring
from opsconductor_targets.models import Credential

if TYPE_CHECKING:
    from conftest import World, WorldFactory

PASSWORD = "Sup3r-Secret-Target-Passw0rd"
EXECUTOR = {"dapr-caller-app-id": "executor"}


def private_key(passphrase: str | None = None) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_private_key("openssh", passphrase=passphrase).decode()


async def fetch(world: World, target_id: str, caller: str | None = "executor") -> object:
    headers = {"dapr-caller-app-id": caller} if caller else {}
    return await world.client.get(f"/internal/targets/{target_id}/credential", headers=headers)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[EmbeddedHost]:
    """The real embedded runtime, which sets the caller's app-id header on every invocation."""
    embedded = EmbeddedHost(tmp_path / "host")
    (tmp_path / "host").mkdir()
    await embedded.open()
    try:
        yield embedded
    finally:
        await embedded.close()


class TestWriteOnly:
    async def test_put_sets_and_never_shows(self, world: World) -> None:
        target = await world.create()
        await world.drain()
        response = await world.client.put(f"/targets/{target['id']}/credential",
                                          headers=world.auth(world.operator),
                                          json={"type": "password", "password": PASSWORD})
        assert response.status_code == 200
        body = response.json()
        assert (body["has_credential"], body["credential_type"]) == (True, "password")
        assert PASSWORD not in response.text
        key = private_key("key-pass-phrase")
        response = await world.client.put(f"/targets/{target['id']}/credential",
                                          headers=world.auth(), json={
                                              "type": "private_key", "private_key": key,
                                              "passphrase": "key-pass-phrase"})
        assert response.status_code == 200, response.text
        assert response.json()["credential_type"] == "private_key"
        events = await world.events()
        assert [(e["type"], e["data"]["version"]) for e in events] == [
            ("credential.changed", 1), ("credential.changed", 2)]
        world.assert_absent(events, PASSWORD, key, "key-pass-phrase")
        # There is no public way back: GET shows only that one is set.
        read = await world.client.get(f"/targets/{target['id']}", headers=world.auth())
        world.assert_absent(read.text, PASSWORD, key, "key-pass-phrase")

    @pytest.mark.parametrize(("given", "passphrase"), [("right", "wrong-one"), ("right", None)])
    async def test_key_that_does_not_open_is_422(self, world: World, given: str,
                                                 passphrase: str | None) -> None:
        target = await world.create()
        response = await world.client.put(f"/targets/{target['id']}/credential",
                                          headers=world.auth(), json={
                                              "type": "private_key",
                                              "private_key": private_key("right"),
                                              "passphrase": passphrase})
        assert response.status_code == 422
        assert await world.credential_row(target["id"]) is None

    async def test_winrm_takes_passwords_only(self, world: World) -> None:
        target = await world.create(protocol="winrm")
        response = await world.client.put(f"/targets/{target['id']}/credential",
                                          headers=world.auth(), json={
                                              "type": "private_key", "private_key": private_key()})
        assert response.status_code == 422

    async def test_clear(self, world: World) -> None:
        target = await world.create(credential={"type": "password", "password": PASSWORD})
        await world.drain()
        response = await world.client.delete(f"/targets/{target['id']}/credential",
                                             headers=world.auth())
        assert response.status_code == 204
        assert (await world.row(target["id"])).has_credential is False  # type: ignore[union-attr]
        assert await world.credential_row(target["id"]) is None
        events = await world.events()
        assert [(e["type"], e["data"]["change"]) for e in events] == [
            ("credential.changed", "cleared")]
        again = await world.client.delete(f"/targets/{target['id']}/credential",
                                          headers=world.auth())
        assert again.status_code == 404

    async def test_without_the_master_key_nothing_is_stored(
            self, make_world: WorldFactory) -> None:
        async with make_world() as running:
            running.runtime.secrets.clear()
            running.app.state.vault._keyring = None
            response = await running.client.post("/targets", headers=running.auth(), json={
                "name": "web1", "host": "10.0.0.1", "username": "u",
                "credential": {"type": "password", "password": PASSWORD}})
            assert response.status_code == 503
            assert await running.count_targets() == 0
            assert (await running.client.get("/readyz")).status_code == 503
            plain = await running.client.post("/targets", headers=running.auth(), json={
                "name": "web1", "host": "10.0.0.1", "username": "u"})
            assert plain.status_code == 201


class TestAtRest:
    async def test_the_row_holds_ciphertext_only(self, world: World) -> None:
        key = private_key()
        a = await world.create(credential={"type": "password", "password": PASSWORD})
        b = await world.create(credential={"type": "private_key", "private_key": key})
        row = await world.credential_row(a["id"])
        assert row is not None and row.key_id == world.app.state.vault.keyring.active
        world.assert_absent(await world.database_dump(), PASSWORD, key)
        assert (await fetch(world, b["id"])).json()["private_key"] == key  # type: ignore[attr-defined]

    async def test_a_ciphertext_copied_to_another_row_does_not_decrypt(self, world: World) -> None:
        victim = await world.create(host="127.0.0.1", port=1,
                                    credential={"type": "password", "password": PASSWORD})
        mine = await world.create(host="127.0.0.1", port=1,
                                  credential={"type": "password", "password": "my-own-password"})
        stolen = await world.credential_row(victim["id"])
        assert stolen is not None
        async with world.app.state.db.transaction() as session:
            await session.execute(update(Credential).where(
                Credential.target_id == uuid.UUID(mine["id"])).values(
                key_id=stolen.key_id, wrapped_key=stolen.wrapped_key,
                ciphertext=stolen.ciphertext))
        response = await fetch(world, mine["id"])
        assert response.status_code == 503  # type: ignore[attr-defined]
        assert PASSWORD not in response.text  # type: ignore[attr-defined]
        assert (await fetch(world, victim["id"])).json()["password"] == PASSWORD  # type: ignore[attr-defined]
        # The health sweep says so instead of skipping the target silently.
        await world.tick()
        shown = (await world.client.get(f"/targets/{mine['id']}", headers=world.auth())).json()
        assert (shown["status"], shown["last_check_stage"]) == ("degraded", "auth")
        assert "cannot be decrypted" in shown["last_check_message"]


class TestRotation:
    async def test_tick_rewraps_in_batches_and_old_rows_keep_opening(
            self, make_world: WorldFactory, keyring: Keyring) -> None:
        async with make_world(rewrap_batch=2) as world:
            # Port 1 on loopback refuses at once: the tick's health checks take no time.
            ids = [(await world.create(host="127.0.0.1", port=1, credential={
                "type": "password", "password": f"{PASSWORD}-{n}"}))["id"] for n in range(5)]
            rotated = keyring.rotated()
            world.runtime.secrets[CREDENTIAL_MASTER_KEY_SECRET] = rotated.dumps()
            # Before the tick every row is still under the old key, and opens.
            assert {(await world.credential_row(i)).key_id for i in ids} == {keyring.active}  # type: ignore[union-attr]
            assert (await fetch(world, ids[0])).json()["password"] == f"{PASSWORD}-0"  # type: ignore[attr-defined]

            summary = await world.tick()
            assert summary["rewrapped"] == 5
            assert {(await world.credential_row(i)).key_id for i in ids} == {rotated.active}  # type: ignore[union-attr]
            # The old key can go now: everything opens under the new one alone.
            world.runtime.secrets[CREDENTIAL_MASTER_KEY_SECRET] = rotated.without(
                {keyring.active}).dumps()
            await world.app.state.vault.reload()
            for n, target_id in enumerate(ids):
                assert (await fetch(world, target_id)).json()["password"] == f"{PASSWORD}-{n}"  # type: ignore[attr-defined]
            assert (await world.tick())["rewrapped"] == 0

    async def test_a_key_this_replica_has_not_seen_is_fetched(self, world: World,
                                                             keyring: Keyring) -> None:
        target = await world.create(credential={"type": "password", "password": PASSWORD})
        rotated = keyring.rotated()
        world.runtime.secrets[CREDENTIAL_MASTER_KEY_SECRET] = rotated.dumps()
        # Another replica, already on the new key, stores a credential for this target.
        sealed = seal(uuid.UUID(target["id"]), CredentialSecret(password="from-elsewhere"),
                      rotated)
        async with world.app.state.db.transaction() as session:
            await session.execute(update(Credential).where(
                Credential.target_id == uuid.UUID(target["id"])).values(
                key_id=sealed.key_id, wrapped_key=sealed.wrapped_key,
                ciphertext=sealed.ciphertext))
        assert (await fetch(world, target["id"])).json()["password"] == "from-elsewhere"  # type: ignore[attr-defined]


class TestExecutorRead:
    async def test_an_unknown_target_or_one_without_a_credential_is_404(self,
                                                                        world: World) -> None:
        bare = await world.create()
        for target_id in (str(uuid.uuid4()), bare["id"]):
            response = await fetch(world, target_id)
            assert response.status_code == 404  # type: ignore[attr-defined]
            assert response.headers["content-type"].startswith(  # type: ignore[attr-defined]
                "application/problem+json")

    async def test_the_answer_carries_what_a_connection_needs(self, world: World) -> None:
        target = await world.create(host="127.0.0.1", port=2222, tags=["web", "eu"],
                                    credential={"type": "password", "password": PASSWORD})
        got = (await fetch(world, target["id"])).json()  # type: ignore[attr-defined]
        assert (got["host"], got["port"], got["protocol"]) == ("127.0.0.1", 2222, "ssh")
        assert (got["credential_type"], got["password"]) == ("password", PASSWORD)
        assert got["version"] == 1


class TestExecutorOnly:
    @pytest.mark.parametrize("caller", [None, "gateway", "jobs", "Executor", "executor "])
    async def test_anyone_but_the_executor_is_403(self, world: World, caller: str | None) -> None:
        target = await world.create(credential={"type": "password", "password": PASSWORD})
        response = await fetch(world, target["id"], caller)
        assert response.status_code == 403  # type: ignore[attr-defined]
        assert PASSWORD not in response.text  # type: ignore[attr-defined]

    async def test_a_user_token_does_not_help(self, world: World) -> None:
        target = await world.create(credential={"type": "password", "password": PASSWORD})
        response = await world.client.get(f"/internal/targets/{target['id']}/credential",
                                          headers=world.auth())
        assert response.status_code == 403

    async def test_through_the_embedded_runtime(self, world: World, host: EmbeddedHost) -> None:
        target = await world.create(credential={"type": "password", "password": PASSWORD},
                                    host_key="SHA256:" + "q" * 43)
        bare = await world.create()
        host.register("targets", world.app)

        credential = await TargetsClient(host.runtime_for("executor")).get_credential(target["id"])
        assert credential is not None
        assert (credential.password, credential.username, credential.version) == (
            PASSWORD, "deploy", 1)
        assert credential.host_key_fingerprint == "SHA256:" + "q" * 43
        assert PASSWORD not in repr(credential)
        executor = TargetsClient(host.runtime_for("executor"))
        assert await executor.get_credential(bare["id"]) is None
        assert await executor.get_credential(str(uuid.uuid4())) is None
        assert await executor.get_credential("../targets") is None
        with pytest.raises(Forbidden):
            await TargetsClient(host.runtime_for("jobs")).get_credential(target["id"])
