"""SSH against Debian's real sshd: host keys, logins, commands, uploads, timeouts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from opsconductor_connectors import (
    ConnectorError,
    HostKeyPin,
    SshCredential,
    SshTarget,
    SshTimeouts,
    Stage,
    connect_ssh,
    probe_host_key,
)
from opsconductor_connectors.ssh_session import SshCommand
from opsconductor_testing.sshd import (
    SshServer,
    eventually,
    generate_key,
    loopback_addresses,
    process_ids_matching,
    unique_sleep,
)

FAST = SshTimeouts(resolve_s=5, connect_s=5, host_key_s=5, auth_s=10)


def pinned_target(server: SshServer) -> SshTarget:
    return SshTarget(server.host, server.port, HostKeyPin.parse(server.host_public_key))


def key_credential(server: SshServer) -> SshCredential:
    return SshCredential(server.user, private_key=server.client_private_key)


async def gone(duration: str) -> bool:
    return await eventually(lambda: not process_ids_matching(f"sleep {duration}"))


async def started(duration: str) -> bool:
    return await eventually(lambda: bool(process_ids_matching(f"sleep {duration}")))


def assert_no_secret(error: ConnectorError, *secrets: str | None) -> None:
    shown = f"{error} {error!r} {error.message} {error.args}"
    for secret in secrets:
        for line in (secret or "").splitlines():
            if len(line.strip()) > 8 and "-----" not in line:
                assert line.strip() not in shown


class TestHostKey:
    async def test_probe_returns_the_fingerprint_and_nothing_authenticates(self, sshd: SshServer) -> None:
        probe = await probe_host_key(sshd.host, sshd.port, timeouts=FAST)

        assert probe.fingerprint == sshd.host_key_fingerprint  # as ssh-keygen -l prints it
        assert probe.algorithm == "ssh-ed25519"
        assert probe.public_key.split()[:2] == sshd.host_public_key.split()[:2]
        assert sshd.connections() == 1
        assert sshd.count(r"publickey|password|Accepted|Failed") == 0

    async def test_pinned_by_fingerprint_connects(self, sshd: SshServer) -> None:
        probe = await probe_host_key(sshd.host, sshd.port)
        target = SshTarget(sshd.host, sshd.port, HostKeyPin.parse(probe.fingerprint))

        async with await connect_ssh(target, key_credential(sshd), timeouts=FAST) as session:
            result = await session.run("echo pinned")

        assert result.stdout == "pinned\n"
        assert sshd.accepted_logins() == 1

    async def test_connect_without_a_pin_is_refused_before_any_login(self, sshd: SshServer) -> None:
        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(SshTarget(sshd.host, sshd.port), key_credential(sshd))

        assert caught.value.stage is Stage.HOST_KEY
        assert sshd.connections() == 0

    async def test_changed_host_key_is_refused(self, sshd: SshServer) -> None:
        old_pin = HostKeyPin.parse(sshd.host_public_key)
        sshd.restart(new_host_key=True)

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(SshTarget(sshd.host, sshd.port, old_pin), key_credential(sshd), timeouts=FAST)

        error = caught.value
        assert error.stage is Stage.HOST_KEY
        assert error.host_key_fingerprint == sshd.host_key_fingerprint
        assert error.host_key_fingerprint != old_pin.fingerprint
        assert "changed" in error.message
        assert sshd.count(r"publickey|Accepted") == 0

    async def test_changed_key_pinned_by_fingerprint_only_is_refused(self, sshd: SshServer) -> None:
        old_pin = HostKeyPin(sshd.host_key_fingerprint)
        sshd.restart(new_host_key=True)

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(SshTarget(sshd.host, sshd.port, old_pin), key_credential(sshd))

        assert caught.value.stage is Stage.HOST_KEY
        assert sshd.accepted_logins() == 0

    def test_pin_rejects_malformed_values(self) -> None:
        for bad in ("", "SHA256:short", "md5:aa:bb", "ssh-ed25519 not-base64!", "-oProxyCommand=sh"):
            with pytest.raises(ValueError):
                HostKeyPin.parse(bad)


class TestAuth:
    async def test_key_login(self, sshd: SshServer) -> None:
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            result = await session.run("id -un")

        assert result.stdout.strip() == sshd.user
        assert set(session.timings) == {"resolve", "connect", "host_key", "auth"}
        assert sshd.count(r"Accepted publickey for ") == 1

    async def test_wrong_key_fails_at_auth(self, sshd: SshServer, tmp_path: Path) -> None:
        generate_key(tmp_path / "stranger")
        stranger = (tmp_path / "stranger").read_text()

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(
                pinned_target(sshd), SshCredential(sshd.user, private_key=stranger), timeouts=FAST
            )

        assert caught.value.stage is Stage.AUTH
        assert sshd.accepted_logins() == 0
        assert_no_secret(caught.value, stranger)

    async def test_key_with_passphrase(self, sshd: SshServer, tmp_path: Path) -> None:
        public = generate_key(tmp_path / "locked", passphrase="correct horse battery")
        sshd.authorize(public)
        locked = (tmp_path / "locked").read_text()
        credential = SshCredential(sshd.user, private_key=locked, passphrase="correct horse battery")

        async with await connect_ssh(pinned_target(sshd), credential) as session:
            assert (await session.run("echo ok")).stdout == "ok\n"

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(
                pinned_target(sshd),
                SshCredential(sshd.user, private_key=locked, passphrase="wrong passphrase!"),
            )
        assert caught.value.stage is Stage.AUTH
        assert_no_secret(caught.value, locked, "wrong passphrase!")

    async def test_malformed_key_fails_at_auth_without_echoing_it(self, sshd: SshServer) -> None:
        garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretish-material-123\n-----END"

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(pinned_target(sshd), SshCredential("root", private_key=garbage))

        assert caught.value.stage is Stage.AUTH
        assert_no_secret(caught.value, garbage)

    async def test_password_login(self, sshd: SshServer, no_secret_in_logs: list[str]) -> None:
        user, password = sshd.password_user()
        no_secret_in_logs.append(password)

        async with await connect_ssh(pinned_target(sshd), SshCredential(user, password)) as s:
            result = await s.run("id -un")

        assert result.stdout.strip() == user
        assert sshd.count(rf"Accepted password for {user} ") == 1

    async def test_wrong_password_fails_at_auth(self, sshd: SshServer, no_secret_in_logs: list[str]) -> None:
        user, _ = sshd.password_user()
        wrong = "Not-The-Password-42"
        no_secret_in_logs.append(wrong)

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(pinned_target(sshd), SshCredential(user, wrong), timeouts=FAST)

        assert caught.value.stage is Stage.AUTH
        assert sshd.accepted_logins() == 0
        assert_no_secret(caught.value, wrong)

    def test_credential_repr_hides_secrets(self) -> None:
        credential = SshCredential("ops", password="hunter2-hunter2", private_key="KEYDATA-XYZ")
        assert "hunter2" not in repr(credential)
        assert "KEYDATA" not in repr(credential)


class TestManyAddresses:
    async def test_one_server_answers_on_twenty_loopback_addresses(self, sshd_factory) -> None:  # type: ignore[no-untyped-def]
        addresses = loopback_addresses(20)  # more than one sshd process can listen on (16)
        server: SshServer = sshd_factory(addresses=addresses)
        credential = key_credential(server)

        for address in (addresses[0], addresses[15], addresses[19]):
            probe = await probe_host_key(address, server.port)
            assert probe.fingerprint == server.host_key_fingerprint
            target = SshTarget(address, server.port, probe.pin())
            async with await connect_ssh(target, credential) as session:
                result = await session.run("echo $SSH_CONNECTION")
            assert result.stdout.split()[2] == address  # the server saw this local address

        assert server.accepted_logins() == 3


class TestNetworkStages:
    async def test_unknown_host_fails_at_resolve(self) -> None:
        for host in ("no-such-host.invalid", "-oProxyCommand=sh"):
            with pytest.raises(ConnectorError) as caught:
                await probe_host_key(host, 22, timeouts=FAST)
            assert caught.value.reported_stage is Stage.RESOLVE

    async def test_closed_port_fails_at_connect(self, sshd: SshServer) -> None:
        port = sshd.port
        sshd.stop()

        with pytest.raises(ConnectorError) as caught:
            await connect_ssh(pinned_target(sshd), key_credential(sshd))

        assert caught.value.stage is Stage.CONNECT
        assert str(port) in caught.value.message
        assert set(caught.value.timings) == {"resolve"}

    async def test_silent_server_times_out_at_host_key(self) -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ConnectorError) as caught:
                await probe_host_key("127.0.0.1", port, timeouts=SshTimeouts(host_key_s=0.5))
        finally:
            server.close()

        assert caught.value.stage is Stage.TIMEOUT
        assert caught.value.during is Stage.HOST_KEY


class TestCommands:
    async def test_output_streams_in_order_with_exit_code(self, sshd: SshServer) -> None:
        script = "echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three; sleep 0.1; echo four >&2; exit 3"
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            running = await session.start(script)
            chunks = [(chunk.stream, chunk.data) async for chunk in running]
            result = await running.wait()

        assert chunks == [
            ("stdout", "one\n"),
            ("stderr", "two\n"),
            ("stdout", "three\n"),
            ("stderr", "four\n"),
        ]
        assert result.exit_code == 3
        assert result.stdout == "one\nthree\n"
        assert result.stderr == "two\nfour\n"
        assert not result.ok

    async def test_callback_receives_chunks_and_binary_is_replaced(self, sshd: SshServer) -> None:
        seen: list[str] = []
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            result = await session.run(
                r"printf 'caf\303\251 \377\n'", on_output=lambda c: seen.append(c.data)
            )

        assert "".join(seen) == result.stdout == "café \ufffd\n"
        assert result.exit_code == 0

    async def test_command_outliving_its_timeout_is_killed(self, sshd: SshServer) -> None:
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            with pytest.raises(ConnectorError) as caught:
                await session.run(f"echo started; sleep {duration}; echo never", timeout_s=1)
            assert caught.value.stage is Stage.TIMEOUT
            assert caught.value.during is Stage.COMMAND
            assert caught.value.partial is not None
            assert caught.value.partial.stdout == "started\n"
            assert await gone(duration)
            # The connection is still good for the next command.
            assert (await session.run("echo after")).stdout == "after\n"

    async def test_timeout_of_a_non_root_user_uses_the_ssh_signal(self, sshd: SshServer) -> None:
        user, password = sshd.password_user()
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(sshd), SshCredential(user, password)) as s:
            with pytest.raises(ConnectorError) as caught:
                await s.run(f"sleep {duration}", timeout_s=0.5)

        assert caught.value.stage is Stage.TIMEOUT
        assert await gone(duration)

    async def test_cancel_stops_a_running_command(self, sshd: SshServer) -> None:
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            running = await session.start(f"echo begin; trap '' TERM; sleep {duration}")
            first = await anext(aiter(running))
            assert first.data == "begin\n"
            assert await started(duration)

            result = await running.cancel(grace_s=0.5)

        assert result.canceled
        assert result.exit_code is None
        assert await gone(duration)

    async def test_cancel_of_a_root_command_asks_no_ssh_signal(self, sshd: SshServer) -> None:
        # OpenSSH refuses signals in root sessions and logs each refusal: a cancel of hundreds
        # of root commands would send hundreds of refused requests. The process group kill
        # stops it alone.
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            assert session.username == "root"
            running = await session.start(f"sleep {duration}")
            assert await started(duration)
            result = await running.cancel(grace_s=0.5)

        assert result.canceled
        assert await gone(duration)
        assert sshd.count(r"signal") == 0, sshd.log_text()

    async def test_a_start_cut_short_still_stops_its_command(self, sshd: SshServer) -> None:
        # The caller is cancelled (an executor shutting down) after the server ran the command
        # but before its reply came back: the command must not be left running.
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            opened_on_the_server = session._conn.create_session

            async def late_reply(*args: Any, **kwargs: Any) -> Any:
                opened = await opened_on_the_server(*args, **kwargs)
                # Long enough to see the remote command start on a loaded machine; shorter
                # than the 5 s a closing session waits for stops in progress.
                await asyncio.sleep(3.0)
                return opened

            session._conn.create_session = late_reply  # type: ignore[method-assign]
            starting = asyncio.create_task(session.start(f"sleep {duration}"))
            assert await started(duration)
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting

        assert await gone(duration)

    async def test_closing_the_session_stops_its_commands(self, sshd: SshServer) -> None:
        duration = unique_sleep()
        session = await connect_ssh(pinned_target(sshd), key_credential(sshd))
        await session.start(f"trap '' TERM HUP; sleep {duration}")
        assert await started(duration)

        await session.close()

        assert await gone(duration)

    async def test_cancel_before_a_slow_login_shell_reaches_the_command(self, sshd_factory) -> None:  # type: ignore[no-untyped-def]
        # Every session first spends 3 s in "its profile" (root's ~/.bashrc may take seconds
        # when many logins start at once), then runs the command it was given. Root sessions
        # refuse SSH signals, so the command can only be stopped through the PID it reports.
        slow = sshd_factory(extra_config=['ForceCommand sleep 3; eval "$SSH_ORIGINAL_COMMAND"'])
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(slow), key_credential(slow)) as session:
            running = await session.start(f"sleep {duration}")
            result = await running.cancel(grace_s=0.5)
            assert result.canceled
            # Past the profile: the command must not be running (nor start later).
            await asyncio.sleep(max(0.0, 3.5 - result.duration_ms / 1000))
            assert await gone(duration)
            assert (await session.run("echo after", timeout_s=15)).stdout == "after\n"

    async def test_cancel_finds_the_pid_after_profile_noise_on_stderr(self, sshd_factory) -> None:  # type: ignore[no-untyped-def]
        # A profile may write to stderr before the command runs (pyenv's rehash does when many
        # logins start at once); the PID line comes after that, and what came before is shown.
        noisy = sshd_factory(
            extra_config=['ForceCommand echo profile-noise >&2; eval "$SSH_ORIGINAL_COMMAND"']
        )
        duration = unique_sleep()
        async with await connect_ssh(pinned_target(noisy), key_credential(noisy)) as session:
            running = await session.start(f"sleep {duration}")
            assert await started(duration)
            result = await running.cancel(grace_s=0.5)
            assert result.canceled
            assert await gone(duration)
            assert result.stderr == "profile-noise\n"

    async def test_pid_line_is_found_whatever_the_chunks(self) -> None:
        command = SshCommand(None, b"opsc-pid-0a1b2c ", stream=False)  # type: ignore[arg-type]
        for data in (b"profile", b" says\nopsc-pid-", b"0a1b2c 12", b"34\nreal ", b"error\n"):
            command._stderr(data)
        assert command.remote_pid == 1234
        long_line = b"x" * 100  # too long to be the PID line: shown before its end arrives
        other = SshCommand(None, b"opsc-pid-0a1b2c ", stream=False)  # type: ignore[arg-type]
        other._stderr(long_line)
        assert other._captured["stderr"] == 100
        for data in (b" opsc-pid-0a1b2c 99\n", b"opsc-pid-0a1b2c 77\n", b"rest"):
            other._stderr(data)
        command._finish(0)
        other._finish(0)
        assert command.result().stderr == "profile says\nreal error\n"
        assert other.remote_pid == 77
        assert other.result().stderr == "x" * 100 + " opsc-pid-0a1b2c 99\nrest"

    async def test_command_lines_stay_out_of_the_logs(
        self, sshd: SshServer, no_secret_in_logs: list[str]
    ) -> None:
        token = "param-secret-8f3a1c77d2"
        no_secret_in_logs.append(token)
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            result = await session.run(f"echo {token} | wc -c")
        assert result.stdout.strip() == str(len(token) + 1)

    async def test_private_command_text_is_never_on_a_server_command_line(
            self, sshd: SshServer) -> None:
        # Any account on the server can read command lines (ps), and this text holds a secret:
        # it travels as input.
        token = "param-secret-5d0e9b41ac"
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            running = await session.start(f"echo {token}; sleep 1; echo done", stdin=b"",
                                          private=True)
            seen_while_running = []
            for _ in range(5):
                seen_while_running += process_ids_matching(token)
                await asyncio.sleep(0.1)
            result = await running.wait(10)

        assert (result.stdout, result.exit_code) == (f"{token}\ndone\n", 0)
        assert seen_while_running == []

    async def test_pid_line_is_not_shown_and_stderr_is_intact(self, sshd: SshServer) -> None:
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            result = await session.run("echo only-this >&2")
        assert result.stderr == "only-this\n"


class TestUpload:
    async def test_bytes_land_with_content_and_mode(self, sshd: SshServer, tmp_path: Path) -> None:
        destination = tmp_path / "deploy.sh"
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            uploaded = await session.upload(b"#!/bin/sh\necho hi\n", str(destination), mode=0o750)
            run = await session.run(str(destination))

        assert destination.read_bytes() == b"#!/bin/sh\necho hi\n"
        assert stat.S_IMODE(destination.stat().st_mode) == 0o750
        assert uploaded.size == 18
        assert run.stdout == "hi\n"
        assert not list(tmp_path.glob("*.part"))

    async def test_file_replaces_an_existing_one(self, sshd: SshServer, tmp_path: Path) -> None:
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        destination = tmp_path / "copy.bin"
        destination.write_bytes(b"old")
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            await session.upload(source, str(destination), mode=0o600)

        assert (
            hashlib.sha256(destination.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
        )
        assert stat.S_IMODE(destination.stat().st_mode) == 0o600

    async def test_missing_directory_fails_at_command(self, sshd: SshServer, tmp_path: Path) -> None:
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd)) as session:
            with pytest.raises(ConnectorError) as caught:
                await session.upload(b"x", str(tmp_path / "nope" / "file"))
        assert caught.value.stage is Stage.COMMAND


class TestStandardInput:
    async def test_stdin_reaches_the_command_then_end_of_file(self, sshd: SshServer) -> None:
        data = b"line one\n\x00binary\xff\n" * 5000  # more than one SSH window's worth
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd), timeouts=FAST) as session:
            running = await session.start("sha256sum", stdin=data)
            result = await running.wait(timeout_s=20)

        assert result.exit_code == 0
        assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()

    async def test_empty_stdin_closes_it_at_once(self, sshd: SshServer) -> None:
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd), timeouts=FAST) as session:
            running = await session.start("cat; echo eof", stdin=b"")
            result = await running.wait(timeout_s=10)
        assert result.stdout == "eof\n"

    async def test_a_script_on_the_interpreters_stdin(self, sshd: SshServer) -> None:
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd), timeouts=FAST) as session:
            running = await session.start("/bin/sh -s", stdin=b"x=41\necho $((x + 1))\nexit 3\n")
            result = await running.wait(timeout_s=10)
        assert (result.stdout, result.exit_code) == ("42\n", 3)


class TestCipher:
    async def test_aes_gcm_is_preferred(self, sshd: SshServer) -> None:
        async with await connect_ssh(pinned_target(sshd), key_credential(sshd), timeouts=FAST) as session:
            assert session._conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
