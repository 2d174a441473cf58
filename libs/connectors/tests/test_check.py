"""Connection tests as an operator sees them: per-stage timings, the failing stage, no secrets."""

from __future__ import annotations

import json

from opsconductor_connectors import (
    HostKeyPin,
    SshCredential,
    SshTarget,
    Stage,
    WinrmCredential,
    WinrmTarget,
    check_ssh_connection,
    check_winrm_connection,
)
from opsconductor_testing.sshd import SshServer
from opsconductor_testing.winrm_peer import WinrmPeer


def stage_names(check: dict) -> list[str]:  # type: ignore[type-arg]
    return [s["stage"] for s in check["stages"]]


class TestSshCheck:
    async def test_success_reports_every_stage_and_the_os(self, sshd: SshServer) -> None:
        target = SshTarget(sshd.host, sshd.port, HostKeyPin.parse(sshd.host_key_fingerprint))
        credential = SshCredential(sshd.user, private_key=sshd.client_private_key)

        check = (await check_ssh_connection(target, credential)).as_dict()

        assert check["ok"] is True
        assert check["stage"] == "command"
        assert stage_names(check) == ["resolve", "connect", "host_key", "auth", "command"]
        assert all(s["ok"] for s in check["stages"])
        assert check["latency_ms"] >= sum(s["latency_ms"] for s in check["stages"]) - 1
        assert check["os_info"].startswith("Linux ")
        assert check["host_key_fingerprint"] == sshd.host_key_fingerprint

    async def test_unknown_host_key_shows_the_fingerprint_and_sends_nothing(
        self, sshd: SshServer, no_secret_in_logs: list[str]
    ) -> None:
        user, password = sshd.password_user()
        no_secret_in_logs.append(password)

        check = (
            await check_ssh_connection(SshTarget(sshd.host, sshd.port), SshCredential(user, password))
        ).as_dict()

        assert check["ok"] is False
        assert check["stage"] == "host_key"
        assert check["host_key_fingerprint"] == sshd.host_key_fingerprint
        assert stage_names(check) == ["host_key"]
        assert sshd.count(r"password|publickey|Accepted|Failed") == 0
        assert password not in json.dumps(check)

    async def test_pin_then_success(self, sshd: SshServer) -> None:
        credential = SshCredential(sshd.user, private_key=sshd.client_private_key)
        first = await check_ssh_connection(SshTarget(sshd.host, sshd.port), credential)
        assert first.host_key_fingerprint is not None

        pinned = SshTarget(sshd.host, sshd.port, HostKeyPin.parse(first.host_key_fingerprint))
        second = await check_ssh_connection(pinned, credential)

        assert second.ok
        assert sshd.accepted_logins() == 1

    async def test_changed_host_key(self, sshd: SshServer) -> None:
        target = SshTarget(sshd.host, sshd.port, HostKeyPin.parse(sshd.host_public_key))
        sshd.restart(new_host_key=True)

        check = await check_ssh_connection(
            target, SshCredential(sshd.user, private_key=sshd.client_private_key)
        )

        assert not check.ok
        assert check.stage is Stage.HOST_KEY
        assert check.host_key_fingerprint == sshd.host_key_fingerprint
        assert [(s.stage, s.ok) for s in check.stages][-1] == (Stage.HOST_KEY, False)
        assert sshd.accepted_logins() == 0

    async def test_wrong_password_fails_at_auth_without_echoing_it(
        self, sshd: SshServer, no_secret_in_logs: list[str]
    ) -> None:
        user, _ = sshd.password_user()
        wrong = "Nope-Nope-Nope-123"
        no_secret_in_logs.append(wrong)
        target = SshTarget(sshd.host, sshd.port, HostKeyPin.parse(sshd.host_key_fingerprint))

        check = (await check_ssh_connection(target, SshCredential(user, wrong))).as_dict()

        assert check["ok"] is False
        assert check["stage"] == "auth"
        assert stage_names(check) == ["resolve", "connect", "host_key", "auth"]
        assert wrong not in json.dumps(check)

    async def test_nothing_listening_fails_at_connect(self, sshd: SshServer) -> None:
        target = SshTarget(sshd.host, sshd.port, HostKeyPin.parse(sshd.host_key_fingerprint))
        sshd.stop()

        check = await check_ssh_connection(target, SshCredential("root", password="x-x-x-x"))

        assert (check.ok, check.stage) == (False, Stage.CONNECT)
        assert [s.stage for s in check.stages] == [Stage.RESOLVE, Stage.CONNECT]


class TestWinrmCheck:
    def target(self, peer: WinrmPeer) -> WinrmTarget:
        return WinrmTarget(peer.host, peer.port, scheme="http", allow_insecure_http=True)

    async def test_success(self, winrm_peer: WinrmPeer) -> None:
        credential = WinrmCredential(winrm_peer.username, winrm_peer.password, auth="basic")

        check = (
            await check_winrm_connection(self.target(winrm_peer), credential, os_command="uname -srm")
        ).as_dict()

        assert check["ok"] is True
        assert stage_names(check) == ["resolve", "connect", "auth", "command"]
        assert check["os_info"].startswith("Linux ")

    async def test_wrong_password(self, winrm_peer: WinrmPeer, no_secret_in_logs: list[str]) -> None:
        wrong = "Bad-Password-4711"
        no_secret_in_logs.append(wrong)
        credential = WinrmCredential(winrm_peer.username, wrong, auth="basic")

        check = (await check_winrm_connection(self.target(winrm_peer), credential)).as_dict()

        assert (check["ok"], check["stage"]) == (False, "auth")
        assert stage_names(check) == ["resolve", "connect", "auth"]
        assert wrong not in json.dumps(check)

    async def test_os_command_failure_is_not_a_connection_failure(self, winrm_peer: WinrmPeer) -> None:
        credential = WinrmCredential(winrm_peer.username, winrm_peer.password, auth="basic")

        check = await check_winrm_connection(self.target(winrm_peer), credential)  # `ver`: no sh

        assert check.ok
        assert check.os_info is None
