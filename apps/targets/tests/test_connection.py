"""Connection tests against real peers: Debian's OpenSSH sshd and a WS-Management peer."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest

from opsconductor_testing.sshd import SshServer
from opsconductor_testing.winrm_peer import WinrmPeer

if TYPE_CHECKING:
    from conftest import World


def stage_names(result: dict[str, Any]) -> list[str]:
    return [s["stage"] for s in result["stages"]]


async def ssh_target(world: World, sshd: SshServer, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"host": sshd.host, "port": sshd.port, "username": sshd.user,
                            "credential": {"type": "private_key",
                                           "private_key": sshd.client_private_key}}
    return await world.create(**{**body, **extra})


async def connection_test(world: World, target: dict[str, Any]) -> dict[str, Any]:
    response = await world.client.post(f"/targets/{target['id']}/test", headers=world.auth())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


class TestSsh:
    async def test_unknown_key_then_pin_then_success(self, world: World, sshd: SshServer) -> None:
        target = await ssh_target(world, sshd)
        await world.drain()

        first = await connection_test(world, target)
        assert (first["ok"], first["stage"]) == (False, "host_key")
        assert first["host_key_fingerprint"] == sshd.host_key_fingerprint
        assert "approve" in first["message"]
        assert sshd.count(r"publickey|password|Accepted|Failed") == 0  # nothing was sent
        shown = (await world.client.get(f"/targets/{target['id']}", headers=world.auth())).json()
        assert shown["presented_host_key_fingerprint"] == sshd.host_key_fingerprint
        assert shown["host_key_fingerprint"] is None

        wrong = await world.client.post(f"/targets/{target['id']}/host-key", headers=world.auth(),
                                        json={"fingerprint": "SHA256:" + "Z" * 43})
        assert wrong.status_code == 409
        pinned = await world.client.post(f"/targets/{target['id']}/host-key",
                                         headers=world.auth(),
                                         json={"fingerprint": first["host_key_fingerprint"]})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["host_key_fingerprint"] == sshd.host_key_fingerprint
        assert pinned.json()["presented_host_key_fingerprint"] is None

        second = await connection_test(world, target)
        assert second["ok"] is True, second
        assert second["stage"] == "command"
        assert stage_names(second) == ["resolve", "connect", "host_key", "auth", "command"]
        assert second["os_info"].startswith("Linux ")
        assert second["status"] == "healthy"
        assert sshd.accepted_logins() == 1

        events = await world.events()
        kinds = [e["type"] for e in events]
        assert kinds.count("host_key.pinned") == 1
        pin_event = next(e for e in events if e["type"] == "host_key.pinned")
        assert pin_event["data"]["fingerprint"] == sshd.host_key_fingerprint
        status_events = [e["data"] for e in events if e["type"] == "target.status_changed"]
        assert [(s["previous"], s["status"]) for s in status_events] == [
            ("unknown", "degraded"), ("degraded", "healthy")]

    async def test_password_login(self, world: World, sshd: SshServer) -> None:
        user, password = sshd.password_user()
        target = await world.create(host=sshd.host, port=sshd.port, username=user,
                                    host_key=sshd.host_public_key,
                                    credential={"type": "password", "password": password})
        result = await connection_test(world, target)
        assert result["ok"] is True, result
        assert password not in str(result)

    async def test_wrong_key_fails_at_auth(self, world: World, sshd: SshServer) -> None:
        stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
        target = await world.create(host=sshd.host, port=sshd.port, username=sshd.user,
                                    host_key=sshd.host_key_fingerprint,
                                    credential={"type": "private_key", "private_key": stranger})
        result = await connection_test(world, target)
        assert (result["ok"], result["stage"]) == (False, "auth")
        assert stage_names(result) == ["resolve", "connect", "host_key", "auth"]
        assert result["status"] == "degraded"
        assert sshd.accepted_logins() == 0

    async def test_changed_host_key_is_refused(self, world: World, sshd: SshServer) -> None:
        target = await ssh_target(world, sshd, host_key=sshd.host_public_key)
        assert (await connection_test(world, target))["ok"] is True
        old = sshd.host_key_fingerprint
        sshd.restart(new_host_key=True)
        assert sshd.host_key_fingerprint != old

        result = await connection_test(world, target)
        assert (result["ok"], result["stage"]) == (False, "host_key")
        assert result["host_key_fingerprint"] == sshd.host_key_fingerprint
        assert "changed" in result["message"]
        assert sshd.accepted_logins() == 0  # the restarted server's log: no login since
        shown = (await world.client.get(f"/targets/{target['id']}", headers=world.auth())).json()
        assert shown["host_key_fingerprint"] == old  # the pin is never replaced silently
        assert shown["presented_host_key_fingerprint"] == sshd.host_key_fingerprint

        await world.client.post(f"/targets/{target['id']}/host-key", headers=world.auth(),
                                json={"fingerprint": sshd.host_key_fingerprint})
        assert (await connection_test(world, target))["ok"] is True

    async def test_pinned_but_no_credential(self, world: World, sshd: SshServer) -> None:
        target = await world.create(host=sshd.host, port=sshd.port, username=sshd.user,
                                    host_key=sshd.host_key_fingerprint)
        result = await connection_test(world, target)
        assert (result["ok"], result["stage"]) == (False, "auth")
        assert "no credential" in result["message"]

    async def test_nothing_listening_is_unreachable(self, world: World, sshd: SshServer) -> None:
        target = await ssh_target(world, sshd, host_key=sshd.host_key_fingerprint)
        sshd.stop()
        result = await connection_test(world, target)
        assert (result["ok"], result["stage"], result["status"]) == (False, "connect",
                                                                      "unreachable")

    async def test_loopback_refused_at_test_time(self, world: World, sshd: SshServer) -> None:
        target = await ssh_target(world, sshd)
        world.settings.allow_loopback = False  # e.g. the setting was turned off since
        result = await connection_test(world, target)
        assert (result["ok"], result["stage"]) == (False, "resolve")
        assert "refused" in result["message"] and "loopback" in result["message"]
        assert sshd.connections() == 0

    async def test_many_tests_at_once(self, world: World, sshd: SshServer) -> None:
        targets = [await ssh_target(world, sshd, name=f"web{n}", host_key=sshd.host_key_fingerprint)
                   for n in range(24)]
        results = await asyncio.gather(*(connection_test(world, t) for t in targets))
        assert [r["ok"] for r in results] == [True] * 24
        assert sshd.accepted_logins() == 24

    async def test_a_name_with_a_dead_address_first(self, world: World, sshd: SshServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        real = asyncio.base_events.BaseEventLoop.getaddrinfo

        async def two_addresses(loop: Any, host: str, port: int, **kwargs: Any) -> Any:
            if host != "multi.example":
                return await real(loop, host, port, **kwargs)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", (sshd.host, port))]

        monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", two_addresses)
        target = await ssh_target(world, sshd, host="multi.example",
                                  host_key=sshd.host_key_fingerprint)
        result = await connection_test(world, target)
        assert result["ok"] is True, result

    async def test_pin_a_public_key_explicitly(self, world: World, sshd: SshServer) -> None:
        target = await ssh_target(world, sshd)
        response = await world.client.post(f"/targets/{target['id']}/host-key",
                                           headers=world.auth(),
                                           json={"public_key": sshd.host_public_key,
                                                 "fingerprint": sshd.host_key_fingerprint})
        assert response.status_code == 200
        assert (await connection_test(world, target))["ok"] is True
        mismatch = await world.client.post(f"/targets/{target['id']}/host-key",
                                           headers=world.auth(),
                                           json={"public_key": sshd.host_public_key,
                                                 "fingerprint": "SHA256:" + "b" * 43})
        assert mismatch.status_code == 422

    async def test_winrm_targets_have_no_host_key(self, world: World) -> None:
        target = await world.create(protocol="winrm")
        response = await world.client.post(f"/targets/{target['id']}/host-key",
                                           headers=world.auth(),
                                           json={"fingerprint": "SHA256:" + "b" * 43})
        assert response.status_code == 409


class TestWinrm:
    async def winrm_target(self, world: World, peer: WinrmPeer, *, password: str,
                           verify_tls: bool = False) -> dict[str, Any]:
        return await world.create(
            protocol="winrm", host=peer.host, port=peer.port, username=peer.username,
            winrm={"transport": "basic", "scheme": "https", "verify_tls": verify_tls},
            credential={"type": "password", "password": password})

    async def test_basic_over_https(self, world: World, tls_peer: WinrmPeer) -> None:
        target = await self.winrm_target(world, tls_peer, password=tls_peer.password)
        result = await connection_test(world, target)
        assert result["ok"] is True, result
        assert stage_names(result) == ["resolve", "connect", "auth", "command"]
        assert result["status"] == "healthy"
        assert tls_peer.count("Command") >= 1

    async def test_wrong_password(self, world: World, tls_peer: WinrmPeer) -> None:
        target = await self.winrm_target(world, tls_peer, password="Not-The-Password-1")
        result = await connection_test(world, target)
        assert (result["ok"], result["stage"]) == (False, "auth")
        assert tls_peer.auth_failures >= 1

    async def test_untrusted_certificate_sends_nothing(self, world: World,
                                                       tls_peer: WinrmPeer) -> None:
        target = await self.winrm_target(world, tls_peer, password=tls_peer.password,
                                         verify_tls=True)
        result = await connection_test(world, target)
        assert (result["ok"], result["stage"]) == (False, "host_key")
        assert tls_peer.count("Create") == 0
