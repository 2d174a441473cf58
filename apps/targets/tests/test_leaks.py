"""NO LEAKS: after create, update, test, import, export and a health tick, no plaintext secret is
in the database (rows and SQLite file bytes), the logs, the published events or any response."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncssh
import pytest

from opsconductor_testing.sshd import SshServer
from opsconductor_testing.winrm_peer import WinrmPeer

if TYPE_CHECKING:
    from conftest import World

IMPORTED_PASSWORD = "Imported-Inventory-Secret-5150"
REJECTED_PASSWORD = "Rejected-Request-Secret-8080"
PASSPHRASE = "Key-Passphrase-Never-Shown-42"


async def test_no_secret_anywhere(world: World, sshd: SshServer, tls_peer: WinrmPeer,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ssh_user, ssh_password = sshd.password_user()
    client_key = sshd.client_private_key
    locked_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key(
        "openssh", passphrase=PASSPHRASE).decode()
    secrets = [ssh_password, client_key, locked_key, PASSPHRASE, tls_peer.password,
               IMPORTED_PASSWORD, REJECTED_PASSWORD]
    auth = world.auth()

    # create
    by_password = await world.create(name="pw", host=sshd.host, port=sshd.port, username=ssh_user,
                                     credential={"type": "password", "password": ssh_password})
    by_key = await world.create(name="key", host=sshd.host, port=sshd.port, username=sshd.user,
                                credential={"type": "private_key", "private_key": locked_key,
                                            "passphrase": PASSPHRASE})
    windows = await world.create(name="win", protocol="winrm", host=tls_peer.host,
                                 port=tls_peer.port, username=tls_peer.username,
                                 winrm={"transport": "basic", "scheme": "https",
                                        "verify_tls": False},
                                 credential={"type": "password", "password": tls_peer.password})
    # a refused request that carried a secret
    refused = await world.client.post("/targets", headers=auth, json={
        "name": "bad", "host": "10.0.0.1", "port": 0, "username": "u",
        "credential": {"type": "password", "password": REJECTED_PASSWORD}})
    assert refused.status_code == 422

    # update, and replace a credential
    for target in (by_password, by_key):
        response = await world.client.patch(f"/targets/{target['id']}", headers=auth,
                                            json={"description": "changed", "tags": ["leak"]})
        assert response.status_code == 200
    response = await world.client.put(f"/targets/{by_key['id']}/credential", headers=auth,
                                      json={"type": "private_key", "private_key": client_key})
    assert response.status_code == 200

    # test: unknown key, pin, test again (password and key logins)
    for target in (by_password, by_key):
        first = await world.client.post(f"/targets/{target['id']}/test", headers=auth)
        await world.client.post(f"/targets/{target['id']}/host-key", headers=auth,
                                json={"fingerprint": first.json()["host_key_fingerprint"]})
        second = await world.client.post(f"/targets/{target['id']}/test", headers=auth)
        assert second.json()["ok"] is True, second.text
    tested = await world.client.post(f"/targets/{windows['id']}/test", headers=auth)
    assert tested.json()["ok"] is True, tested.text  # the password went over TLS
    # a wrong password fails at auth without being echoed
    await world.client.put(f"/targets/{by_password['id']}/credential", headers=auth,
                           json={"type": "password", "password": REJECTED_PASSWORD})
    failed = await world.client.post(f"/targets/{by_password['id']}/test", headers=auth)
    assert failed.json()["stage"] == "auth"

    # import (with a password in the file) and export
    inventory = (f"[web]\nweb1 ansible_host=10.0.0.5 ansible_user=deploy "
                 f"ansible_password={IMPORTED_PASSWORD}\n")
    for params in ({"dry_run": "true"}, {}, {}):
        response = await world.client.post("/targets/import", headers=auth,
                                           content=inventory.encode(), params=params)
        assert response.status_code == 200, response.text
    for fmt in ("csv", "yaml", "ini"):
        assert (await world.client.get("/targets/export", headers=auth,
                                       params={"format": fmt})).status_code == 200

    # health tick, reads, the internal route refused to a non-executor
    await world.tick()
    await world.client.get("/targets", headers=auth)
    for target in (by_password, by_key, windows):
        await world.client.get(f"/targets/{target['id']}", headers=auth)
        await world.client.get(f"/targets/{target['id']}/health", headers=auth)
        denied = await world.client.get(f"/internal/targets/{target['id']}/credential",
                                        headers={"dapr-caller-app-id": "gateway"})
        assert denied.status_code == 403

    events = await world.events()
    assert len(events) > 10
    world.assert_absent("\n".join(world.bodies), *secrets)
    world.assert_absent(events, *secrets)
    world.assert_absent(caplog.text, *secrets)
    world.assert_absent(" ".join(str(r.__dict__) for r in caplog.records), *secrets)
    world.assert_absent(await world.database_dump(), *secrets)
    # The secrets are all there, sealed: the executor gets them back.
    key_back = await world.client.get(f"/internal/targets/{by_key['id']}/credential",
                                      headers={"dapr-caller-app-id": "executor"})
    assert key_back.json()["private_key"] == client_key
