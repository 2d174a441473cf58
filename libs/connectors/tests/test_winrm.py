"""WinRM through pywinrm's real protocol path, against the WS-Management test peer."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor_connectors import (
    ConnectorError,
    Stage,
    WinrmClient,
    WinrmCredential,
    WinrmTarget,
    WinrmTimeouts,
)
from opsconductor_testing.sshd import eventually, process_ids_matching, unique_sleep
from opsconductor_testing.tiers import missing_dependency
from opsconductor_testing.winrm_peer import WinrmPeer

QUICK = WinrmTimeouts(operation_s=2, auth_s=10)


def client_for(peer: WinrmPeer, password: str | None = None) -> WinrmClient:
    target = WinrmTarget(peer.host, peer.port, scheme="http", allow_insecure_http=True)
    credential = WinrmCredential(peer.username, password or peer.password, auth="basic")
    return WinrmClient(target, credential, timeouts=QUICK)


class TestRun:
    async def test_output_and_exit_code(self, winrm_peer: WinrmPeer) -> None:
        result = await client_for(winrm_peer).run("echo out; echo err >&2; exit 3")

        assert result.stdout == "out\n"
        assert result.stderr == "err\n"
        assert result.exit_code == 3
        assert {"resolve", "auth", "command"} <= set(result.timings)
        # pywinrm's whole exchange: shell, command, output, terminate, delete.
        for action in ("Create", "Command", "Receive", "Signal", "Delete"):
            assert await eventually(lambda a=action: winrm_peer.count(a) >= 1)

    async def test_output_streams_while_the_command_runs(self, winrm_peer: WinrmPeer) -> None:
        running = await client_for(winrm_peer).start("for i in 1 2 3; do echo line$i; sleep 0.3; done")
        chunks = [chunk.data async for chunk in running]
        result = await running.wait()

        assert chunks == ["line1\n", "line2\n", "line3\n"]  # one Receive each, not one at the end
        assert result.exit_code == 0

    async def test_long_silence_survives_operation_timeouts(self, winrm_peer: WinrmPeer) -> None:
        winrm_peer.max_receive_wait_s = 0.3  # the peer answers "operation timed out" fast
        result = await client_for(winrm_peer).run("sleep 1.2; echo done")

        assert result.stdout == "done\n"
        assert winrm_peer.count("Receive") >= 3

    async def test_timeout_terminates_the_command(self, winrm_peer: WinrmPeer) -> None:
        duration = unique_sleep()
        with pytest.raises(ConnectorError) as caught:
            await client_for(winrm_peer).run(f"echo begun; sleep {duration}", timeout_s=1)

        assert caught.value.stage is Stage.TIMEOUT
        assert caught.value.during is Stage.COMMAND
        assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"))
        assert await eventually(lambda: not winrm_peer.running_processes())

    async def test_cancel(self, winrm_peer: WinrmPeer) -> None:
        duration = unique_sleep()
        running = await client_for(winrm_peer).start(f"echo begun; sleep {duration}")
        first = await anext(aiter(running))
        result = await running.cancel(grace_s=2)

        assert first.data == "begun\n"
        assert result.canceled
        assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"))


class TestFailures:
    async def test_wrong_password_fails_at_auth(
        self, winrm_peer: WinrmPeer, no_secret_in_logs: list[str]
    ) -> None:
        wrong = "Wrong-Password-0815"
        no_secret_in_logs.extend([wrong, winrm_peer.password])
        with pytest.raises(ConnectorError) as caught:
            await client_for(winrm_peer, password=wrong).run("echo never")

        assert caught.value.stage is Stage.AUTH
        assert winrm_peer.auth_failures >= 1
        assert winrm_peer.count("Command") == 0
        shown = f"{caught.value} {caught.value!r}"
        assert wrong not in shown
        assert winrm_peer.password not in shown

    def test_basic_over_plain_http_needs_explicit_permission(self) -> None:
        with pytest.raises(ConnectorError) as caught:
            WinrmClient(
                WinrmTarget("127.0.0.1", 5985, scheme="http"),
                WinrmCredential("admin", "secret-pass", auth="basic"),
            )
        assert caught.value.stage is Stage.CONNECT
        assert "secret-pass" not in str(caught.value)

    async def test_closed_port_fails_at_connect(self, winrm_peer: WinrmPeer) -> None:
        client = client_for(winrm_peer)
        winrm_peer.stop()
        with pytest.raises(ConnectorError) as caught:
            await client.run("true")
        assert caught.value.stage is Stage.CONNECT

    async def test_unknown_host_fails_at_resolve(self) -> None:
        client = WinrmClient(WinrmTarget("no-such-host.invalid"), WinrmCredential("admin", "pw-pw-pw-pw"))
        with pytest.raises(ConnectorError) as caught:
            await client.run("true")
        assert caught.value.reported_stage is Stage.RESOLVE


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[tuple[WinrmPeer, Path]]:
    """The peer over HTTPS with a self-signed certificate for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_dependency("openssl command line tool (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    peer = WinrmPeer(ssl_context=context).start()
    try:
        yield peer, cert
    finally:
        peer.stop()


class TestTls:
    async def test_untrusted_certificate_is_refused_before_credentials(
        self, tls_peer: tuple[WinrmPeer, Path]
    ) -> None:
        peer, _ = tls_peer
        client = WinrmClient(
            WinrmTarget(peer.host, peer.port),  # https, verification on: the defaults
            WinrmCredential(peer.username, peer.password, auth="basic"),
            timeouts=QUICK,
        )
        with pytest.raises(ConnectorError) as caught:
            await client.run("echo never")

        assert caught.value.stage is Stage.HOST_KEY
        assert peer.requests == []  # no request, so no password, reached the server

    async def test_trusted_certificate_over_https(self, tls_peer: tuple[WinrmPeer, Path]) -> None:
        peer, cert = tls_peer
        client = WinrmClient(
            WinrmTarget(peer.host, peer.port, ca_path=str(cert)),
            WinrmCredential(peer.username, peer.password, auth="basic"),
            timeouts=QUICK,
        )
        result = await client.run("echo secure")

        assert result.stdout == "secure\n"
        assert peer.scheme == "https"


class TestStandardInput:
    async def test_stdin_is_sent_in_blocks_then_closed(self, winrm_peer: WinrmPeer) -> None:
        data = bytes(range(256)) * 1000  # 256 KB: several Send messages
        running = await client_for(winrm_peer).start("sha256sum", stdin=data)
        result = await running.wait(timeout_s=20)

        import hashlib

        assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
        assert winrm_peer.count("Send") == 4

    async def test_a_start_canceled_while_the_shell_opens_runs_nothing(
        self, winrm_peer: WinrmPeer, tmp_path: Path
    ) -> None:
        marker = tmp_path / "ran"
        client = client_for(winrm_peer)
        original = client._protocol

        def slow_protocol():  # type: ignore[no-untyped-def]
            protocol = original()
            open_shell = protocol.open_shell

            def delayed(*args, **kwargs):  # type: ignore[no-untyped-def]
                import time

                time.sleep(0.5)
                return open_shell(*args, **kwargs)

            protocol.open_shell = delayed  # type: ignore[method-assign]
            return protocol

        client._protocol = slow_protocol  # type: ignore[method-assign]
        task = asyncio.ensure_future(client.start(f"touch {marker}"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.5)

        assert not marker.exists()
        assert winrm_peer.count("Command") == 0
