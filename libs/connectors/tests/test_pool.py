"""The SSH pool against the real sshd; reuse and limits are checked on the SERVER side."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from opsconductor_connectors import (
    ConnectorError,
    HostKeyPin,
    SshCredential,
    SshPool,
    SshSession,
    SshTarget,
    Stage,
)
from opsconductor_connectors.ssh_session import LEFTOVER_QUIET_S
from opsconductor_testing.sshd import (
    SshFactory,
    SshServer,
    eventually,
    process_group_members,
    process_ids_matching,
    unique_sleep,
)
from opsconductor_testing.tiers import missing_dependency


def pinned_target(server: SshServer) -> SshTarget:
    return SshTarget(server.host, server.port, HostKeyPin.parse(server.host_public_key))


def key_credential(server: SshServer, version: int = 0) -> SshCredential:
    return SshCredential(server.user, private_key=server.client_private_key, version=version)


class TestReuse:
    async def test_many_commands_share_one_tcp_connection(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool() as pool:
            outputs = []
            for n in range(10):
                async with pool.session(target, credential) as session:
                    outputs.append((await session.run(f"echo {n}")).stdout)
            established_while_pooled = sshd.established_connections()
            stats = pool.stats()

        assert outputs == [f"{n}\n" for n in range(10)]
        assert sshd.connections() == 1  # "Connection from ..." lines in sshd's log
        assert sshd.accepted_logins() == 1
        # The first ran in a session of its own; one kept shell ran the other nine.
        assert sshd.count(r"Starting session: command") == 2
        assert established_while_pooled == 1
        assert (stats.created, stats.reused) == (1, 9)
        assert await eventually(lambda: sshd.established_connections() == 0)

    async def test_concurrent_commands_are_channels_of_one_connection(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)

        async def one(pool: SshPool) -> tuple[float, float]:
            async with pool.session(target, credential) as session:
                # 3 s: each start pays the login shell's start-up (slow for root's bash here).
                out = (await session.run("date +%s.%N; sleep 3; date +%s.%N")).stdout.split()
                return float(out[0]), float(out[1])

        async with SshPool(max_channels_per_connection=8) as pool:
            spans = await asyncio.gather(*(one(pool) for _ in range(6)))

        assert sshd.accepted_logins() == 1
        assert sshd.count(r"Starting session: command") == 6
        # Every command started before any finished: they ran side by side.
        assert max(start for start, _ in spans) < min(end for _, end in spans)

    async def test_another_credential_version_gets_its_own_login(self, sshd: SshServer) -> None:
        target = pinned_target(sshd)
        async with SshPool(max_per_host=1) as pool:
            async with pool.session(target, key_credential(sshd, version=1)) as session:
                await session.run("true")
            async with pool.session(target, key_credential(sshd, version=2)) as session:
                await session.run("true")
            stats = pool.stats()

        assert sshd.accepted_logins() == 2
        assert stats.evicted == 1  # the idle version-1 connection made room under the cap


class TestLimits:
    async def test_per_host_cap_queues_checkouts(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        peak = 0

        async def one(pool: SshPool) -> None:
            nonlocal peak
            async with pool.session(target, credential) as session:
                peak = max(peak, sshd.established_connections())
                await session.run("sleep 0.2")

        async with SshPool(max_per_host=2, max_channels_per_connection=1) as pool:
            await asyncio.gather(*(one(pool) for _ in range(6)))
            stats = pool.stats()

        assert sshd.accepted_logins() == 2
        assert peak <= 2
        assert stats.created == 2
        assert stats.waited >= 1

    async def test_checkout_gives_up_after_its_timeout(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(max_per_host=1, max_channels_per_connection=1, checkout_timeout_s=0.3) as pool:
            async with pool.session(target, credential):
                with pytest.raises(ConnectorError) as caught:
                    async with pool.session(target, credential):
                        pass

        assert caught.value.stage is Stage.TIMEOUT
        assert caught.value.during is Stage.CONNECT


class TestLifecycle:
    async def test_idle_connections_expire(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(idle_timeout_s=0.3) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")
            assert sshd.established_connections() == 1
            assert await eventually(lambda: pool.stats().expired == 1, timeout_s=3)
            assert await eventually(lambda: sshd.established_connections() == 0)
            async with pool.session(target, credential) as session:
                await session.run("true")

        assert sshd.accepted_logins() == 2

    async def test_dead_connection_is_replaced_on_checkout(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(ping_after_idle_s=0) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")
            assert sshd.drop_connections() >= 1
            await asyncio.sleep(0.2)
            async with pool.session(target, credential) as session:
                result = await session.run("echo alive")
            stats = pool.stats()

        assert result.stdout == "alive\n"
        assert stats.dead == 1
        assert sshd.accepted_logins() == 2

    async def test_hung_connection_fails_the_liveness_check(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(ping_after_idle_s=0, ping_timeout_s=0.5) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")
            # Freeze the server side: the TCP connection stays open but nothing answers.
            assert sshd.signal_connections(signal.SIGSTOP) >= 1
            try:
                async with pool.session(target, credential) as session:
                    result = await session.run("echo fresh")
                stats = pool.stats()
            finally:
                sshd.drop_connections()

        assert result.stdout == "fresh\n"
        assert stats.dead == 1
        assert sshd.accepted_logins() == 2

    async def test_close_all_closes_every_connection(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        pool = SshPool(max_channels_per_connection=1)

        async def one() -> None:
            async with pool.session(target, credential) as session:
                await session.run("sleep 0.1")

        await asyncio.gather(one(), one(), one())
        assert sshd.established_connections() == 3
        await pool.close()

        assert await eventually(lambda: sshd.established_connections() == 0)
        with pytest.raises(RuntimeError):
            async with pool.session(target, credential):
                pass


class TestCanceledLogin:
    async def test_the_others_waiting_for_a_canceled_login_log_in_themselves(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)

        async with SshPool() as pool:

            async def use() -> str:
                async with pool.session(target, credential) as session:
                    return (await session.run("echo ok")).stdout

            first = asyncio.ensure_future(use())  # starts the login
            await asyncio.sleep(0)
            others = [asyncio.ensure_future(use()) for _ in range(3)]  # wait for that login
            await asyncio.sleep(0.01)
            first.cancel()
            results = await asyncio.gather(*others)

        assert results == ["ok\n"] * 3
        assert first.cancelled()


# --- kept shells --------------------------------------------------------------------------------
# What must hold is what an exec session per command gives: each command sees a fresh state,
# its exact output and exit code, nothing printed by an earlier command, and a stop that leaves
# nothing running. What changes is what the server does: one session, not one per command.


@contextlib.asynccontextmanager
async def pooled(server: SshServer, *, reuse_shells: bool = True) -> AsyncIterator[SshSession]:
    """A pooled session past its first command (which gets a server session of its own), so
    the commands a test runs in it go to a kept shell."""
    async with SshPool(reuse_shells=reuse_shells) as pool:
        async with pool.session(pinned_target(server), key_credential(server)) as session:
            await session.run("true")
            yield session


@contextlib.contextmanager
def background_sleep() -> Iterator[str]:
    """A `sleep` duration for a process a test leaves running; it is killed afterwards."""
    duration = unique_sleep()
    try:
        yield duration
    finally:
        for pid in process_ids_matching(f"sleep {duration}"):
            os.kill(pid, signal.SIGKILL)


async def shell_pid(session: SshSession) -> str:
    # $$ is the shell's PID inside a subshell too.
    return (await session.run("echo $$")).stdout.strip()


class TestOneSessionForManyCommands:
    async def test_twenty_commands_open_one_server_session(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            outputs = [(await session.run(f"echo {n}")).stdout for n in range(20)]

        assert outputs == [f"{n}\n" for n in range(20)]
        # The first command's session, then one kept shell for all twenty.
        assert sshd.count(r"Starting session: command") == 1 + 1, sshd.log_text()

    async def test_a_connection_keeps_a_shell_from_its_second_command_on(self, sshd: SshServer) -> None:
        # One command per connection (a cold fan-out) gains nothing from a kept shell and
        # would pay for starting it.
        async with SshPool() as pool:
            async with pool.session(pinned_target(sshd), key_credential(sshd)) as session:
                first = await shell_pid(session)
                sessions_after_first = sshd.count(r"Starting session: command")
                second, third = await shell_pid(session), await shell_pid(session)

        assert sessions_after_first == 1
        assert sshd.count(r"Starting session: command") == 2
        assert second == third != first

    async def test_without_reuse_every_command_opens_its_own(self, sshd: SshServer) -> None:
        async with pooled(sshd, reuse_shells=False) as session:
            for n in range(5):
                await session.run(f"echo {n}")

        assert sshd.count(r"Starting session: command") == 1 + 5

    async def test_a_command_with_input_still_gets_a_session_of_its_own(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            await session.run("true")
            running = await session.start("cat", stdin=b"from stdin")
            result = await running.wait(10)

        assert result.stdout == "from stdin"
        assert sshd.count(r"Starting session: command") == 1 + 2  # a kept shell, then cat's own


class TestEachCommandStartsClean:
    async def test_directory_variables_and_exit_stay_inside_the_command(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            first = await session.run("cd /tmp && export OPSC_LEFT=over && OPSC_SET=1 && exit 3")
            second = await session.run('pwd; echo "${OPSC_LEFT:-unset} ${OPSC_SET:-unset}"')
            home = (await session.run("cd && pwd")).stdout

        assert first.exit_code == 3
        assert second.exit_code == 0
        assert second.stdout == f"{home}unset unset\n"

    async def test_output_is_exact_per_stream_with_or_without_a_last_newline(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            bare = await session.run("printf abc; printf err >&2")
            lines = await session.run("printf 'one\\ntwo\\n'; printf 'e1\\ne2\\n' >&2; exit 7")
            empty = await session.run("true")

        assert (bare.stdout, bare.stderr, bare.exit_code) == ("abc", "err", 0)
        assert (lines.stdout, lines.stderr, lines.exit_code) == ("one\ntwo\n", "e1\ne2\n", 7)
        assert (empty.stdout, empty.stderr, empty.exit_code) == ("", "", 0)

    async def test_text_is_run_as_written_quotes_newlines_and_syntax_errors(self, sshd: SshServer) -> None:
        tricky = "printf '%s|' \"a b\" 'c'\"'\"'d' `echo e`\ncat <<'EOF'\n$(not run) ) }\nEOF"
        async with pooled(sshd) as session:
            result = await session.run(tricky)
            broken = await session.run("echo 'unclosed")
            after = await session.run("echo fine")

        assert result.stdout == "a b|c'd|e|$(not run) ) }\n"
        assert broken.exit_code == 2 and broken.stdout == ""
        assert after.stdout == "fine\n"

    async def test_output_that_looks_like_the_end_line_is_just_output(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            result = await session.run("printf '\\036opsc-0000 rc 0\\n'; printf '\\036'; sleep 0.2; echo x")

        assert result.stdout == "\x1eopsc-0000 rc 0\n\x1ex\n"
        assert result.exit_code == 0

    async def test_large_output_streams_in_order(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            result = await session.run("seq 1 200000")

        assert result.stdout == "".join(f"{n}\n" for n in range(1, 200001))


class TestShellStartUp:
    async def test_what_the_start_up_prints_goes_to_the_first_command_only(
            self, sshd_factory: SshFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # BASH_ENV: the account's non-interactive bash reads this file as it starts.
        start_up = tmp_path / "start-up.sh"
        start_up.write_text("echo from start-up\n")
        server = sshd_factory(extra_config=[f"SetEnv SHLVL=1 BASH_ENV={start_up}"])
        opened = SshSession._open_channel

        async def slow_to_resume(self: SshSession, *args: Any, **kwargs: Any) -> Any:
            # A busy loop: the start-up output is read before the first command is handed over.
            channel = await opened(self, *args, **kwargs)
            await asyncio.sleep(0.5)
            return channel

        monkeypatch.setattr(SshSession, "_open_channel", slow_to_resume)
        async with pooled(server) as session:
            first = await session.run("echo one")
            second = await session.run("echo two")

        assert first.stdout.endswith("one\n") and "from start-up" in first.stdout
        assert second.stdout == "two\n"
        assert server.count(r"Starting session: command") == 1 + 1

    async def test_a_kept_shell_leaves_nothing_in_the_temporary_directory(
            self, sshd_factory: SshFactory, tmp_path: Path) -> None:
        # The shell's pipe is a FIFO made there, removed at once.
        temporary = tmp_path / "tmp"
        temporary.mkdir(mode=0o1777)
        temporary.chmod(0o1777)
        server = sshd_factory(extra_config=[f"SetEnv SHLVL=1 TMPDIR={temporary}"])
        async with pooled(server) as session:
            seen = (await session.run('echo "$TMPDIR"')).stdout
            pids = await asyncio.gather(*(shell_pid(session) for _ in range(3)))
            left_while_open = sorted(os.listdir(temporary))

        assert seen == f"{temporary}\n"
        assert len(set(pids)) == 3  # three kept shells at once
        assert server.count(r"Starting session: command") == 1 + 3
        assert left_while_open == []
        assert sorted(os.listdir(temporary)) == []

    async def test_where_a_shell_cannot_make_its_pipe_commands_get_sessions_of_their_own(
            self, sshd_factory: SshFactory) -> None:
        # No mkfifo on the PATH (as on a server without it): no shell may be kept.
        server = sshd_factory(extra_config=["SetEnv SHLVL=1 PATH=/nonexistent"])
        async with pooled(server) as session:
            results = [await session.run(f"echo $$; echo {n} >&2; exit {n}") for n in range(3)]

        assert [(r.stderr, r.exit_code) for r in results] == [(f"{n}\n", n) for n in range(3)]
        assert len({r.stdout for r in results}) == 3  # not one shell's PID
        # The warm-up's session, the shell that could not keep its pipe, then one each.
        assert server.count(r"Starting session: command") == 1 + 1 + 3


class TestWhatACommandLeavesBehind:
    async def test_a_background_process_holding_the_output_is_waited_for(self, sshd: SshServer) -> None:
        # It prints after the command's own shell code exited, with pauses shorter than the
        # quiet period: all of it is the command's, as in an exec session.
        async with pooled(sshd) as session:
            started = time.monotonic()
            first = await session.run("echo now; (for n in 1 2 3; do sleep 0.4; echo later$n; done) &")
            took = time.monotonic() - started
            second = await session.run("echo next")

        assert first.stdout == "now\nlater1\nlater2\nlater3\n"
        assert took >= 1.2
        assert second.stdout == "next\n"

    async def test_a_daemon_with_its_output_elsewhere_is_neither_waited_for_nor_stopped(
            self, sshd: SshServer) -> None:
        # A service started in the background: an exec session ends once nothing holds its
        # output, and leaves the service running.
        with background_sleep() as duration:
            async with pooled(sshd) as session:
                shell = int(await shell_pid(session))
                started = time.monotonic()
                result = await session.run(
                    f"echo starting; sleep {duration} >/dev/null 2>&1 & exit 5", timeout_s=10)
                took = time.monotonic() - started
                shell_ended = await eventually(lambda: not os.path.exists(f"/proc/{shell}"))
                left_running = process_ids_matching(f"sleep {duration}")
                left_in_its_group = process_group_members(shell)
                after = await session.run("echo next")

        assert (result.stdout, result.exit_code) == ("starting\n", 5)
        assert took < LEFTOVER_QUIET_S + 2
        assert shell_ended  # the shell it was started from is gone (its server session too)
        assert left_running
        assert left_in_its_group == sorted(left_running)  # the daemon alone: no shell waits for it
        assert (after.stdout, after.exit_code) == ("next\n", 0)

    async def test_daemons_started_one_after_another_leave_no_server_session_behind(
            self, sshd_factory: SshFactory) -> None:
        # Each daemon holds the shell it was started from; that shell must still go, or its
        # server session stays taken (MaxSessions) for as long as the daemon runs.
        server = sshd_factory(max_sessions=3)
        with background_sleep() as duration:
            async with pooled(server) as session:
                started = [await session.run(f"sleep {duration} >/dev/null 2>&1 & echo {n}", timeout_s=10)
                           for n in range(4)]
                after = await session.run("echo next")
                daemons = process_ids_matching(f"sleep {duration}")

        assert [r.stdout for r in started] == [f"{n}\n" for n in range(4)]
        assert (after.stdout, after.exit_code) == ("next\n", 0)
        assert len(daemons) == 4

    async def test_what_stays_quiet_after_the_command_exited_is_not_waited_for(
            self, sshd: SshServer) -> None:
        # The price of not waiting for daemons: a background job silent for longer than the
        # quiet period is not waited for; what it prints later reaches no command.
        async with pooled(sshd) as session:
            first = await session.run(f"echo now; (sleep {LEFTOVER_QUIET_S + 1}; echo late) &")
            await asyncio.sleep(1.5)
            second = await session.run("echo next")

        assert (first.stdout, first.exit_code) == ("now\n", 0)
        assert second.stdout == "next\n"

    async def test_output_after_the_end_never_reaches_the_next_command(self, sshd: SshServer) -> None:
        # It let go of what the shell waits on but kept the output: it prints once idle.
        async with pooled(sshd) as session:
            first_shell = await shell_pid(session)
            await session.run("(exec 9>&-; sleep 0.3; echo stray) &")
            await asyncio.sleep(0.8)
            second = await session.run("echo next; echo $$")

        assert second.stdout.splitlines()[0] == "next"
        assert "stray" not in second.stdout
        assert second.stdout.splitlines()[1] != first_shell  # that shell was retired

    async def test_a_shell_that_died_while_idle_is_replaced(self, sshd: SshServer) -> None:
        async with pooled(sshd) as session:
            pid = await shell_pid(session)
            os.kill(int(pid), signal.SIGKILL)  # the test server runs on this host
            await asyncio.sleep(0.2)
            result = await session.run("echo alive")

        assert result.stdout == "alive\n"


    async def test_a_kept_shell_closing_as_it_is_reused_is_passed_over(self, sshd: SshServer) -> None:
        # Its channel closed (its end not yet seen by the loop) just as a command comes: the
        # command must run in a new shell, and the old one's end must not end it.
        async with pooled(sshd) as session:
            first = await shell_pid(session)
            session._idle_shells[-1].channel.close()  # type: ignore[union-attr]
            result = await session.run("echo $$")
            await asyncio.sleep(0.2)  # the closed channel's end is delivered meanwhile
            again = await session.run("echo $$")

        assert result.exit_code == 0 and result.stdout.strip() not in ("", first)
        assert again.stdout == result.stdout


class TestLoginShells:
    # The account's own shell runs the commands: the protocol must hold in each common one.
    @pytest.mark.parametrize("shell", ["bash", "dash", "zsh", "ksh", "mksh"])
    async def test_each_login_shell_gives_exact_output_exit_codes_and_isolation(
            self, sshd_factory: SshFactory, shell: str) -> None:
        path = shutil.which(shell)
        if path is None:
            missing_dependency(f"{shell} is not installed; run: scripts/services.sh install sshd")
        # sshd sets SHELL after the account's; the kept shell is `exec "$SHELL"`.
        server = sshd_factory(extra_config=[f"SetEnv SHELL={path}"])
        async with pooled(server) as session:
            kept_shell = await session.run("readlink /proc/$$/exe")
            exact = await session.run("printf 'one\\ntwo'; printf err >&2; exit 3")
            moved = await session.run("cd /tmp && OPSC_SET=1 && exit 4")
            clean = await session.run('pwd; echo "${OPSC_SET:-unset}"')
            waited = await session.run("echo now; (sleep 0.5; echo later) &")
            broken = await session.run("echo 'unclosed")
            last = await session.run("echo last")
            with background_sleep() as duration:
                daemon = await session.run(f"sleep {duration} >/dev/null 2>&1 & echo started", timeout_s=10)

        assert kept_shell.stdout.strip() == os.path.realpath(path)
        assert (exact.stdout, exact.stderr, exact.exit_code) == ("one\ntwo", "err", 3)
        assert moved.exit_code == 4
        assert clean.stdout.splitlines()[1] == "unset" and clean.stdout.splitlines()[0] != "/tmp"
        assert waited.stdout == "now\nlater\n"
        assert broken.exit_code not in (0, None)
        assert (last.stdout, last.exit_code) == ("last\n", 0)
        assert (daemon.stdout, daemon.exit_code) == ("started\n", 0)
        # The first command's session, one kept shell for all the rest, and the one that ends
        # that shell once the daemon (which holds it) had been quiet.
        assert server.count(r"Starting session: command") == 1 + 1 + 1


class TestStopping:
    async def test_timeout_stops_the_command_and_the_next_one_runs(self, sshd: SshServer) -> None:
        duration = unique_sleep()
        async with pooled(sshd) as session:
            before = await shell_pid(session)
            with pytest.raises(ConnectorError) as raised:
                await session.run(f"sleep {duration}", timeout_s=1.0, grace_s=0.2)
            assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"))
            after = await session.run("echo $$")

        assert raised.value.stage is Stage.TIMEOUT
        assert after.exit_code == 0 and after.stdout.strip() != before

    async def test_cancel_stops_everything_the_command_started(self, sshd: SshServer) -> None:
        duration = unique_sleep()
        async with pooled(sshd) as session:
            await session.run("true")  # the shell is open and idle
            running = await session.start(f"sleep {duration} & sleep {duration}; wait", stdin=b"")
            assert await eventually(lambda: len(process_ids_matching(f"sleep {duration}")) == 2)
            result = await running.cancel(grace_s=0.5)

            assert result.canceled
            assert await eventually(lambda: not process_ids_matching(f"sleep {duration}"))
            assert (await session.run("echo again")).stdout == "again\n"


class TestServerSessionLimit:
    async def test_a_refused_session_is_tried_again_a_moment_later(self, sshd_factory: SshFactory) -> None:
        # MaxSessions 1 and two commands at once: the second is refused while the first runs,
        # and gets the session once the first has ended.
        server = sshd_factory(max_sessions=1)
        async with pooled(server, reuse_shells=False) as session:
            results = await asyncio.gather(*(session.run(f"echo {n}") for n in range(2)))

        assert [r.stdout for r in results] == ["0\n", "1\n"]
        assert server.count(r"no more sessions") >= 1, server.log_text()

    async def test_kept_shells_make_room_when_the_server_refuses_a_session(
            self, sshd_factory: SshFactory) -> None:
        # MaxSessions 3: three kept shells fill it; a command with input needs a session of
        # its own, and the idle shells give theirs back for it.
        server = sshd_factory(max_sessions=3)
        target, credential = pinned_target(server), key_credential(server)
        async with SshPool(max_channels_per_connection=3) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")  # its first command: a session of its own, then closed

            async def one(n: int) -> str:
                async with pool.session(target, credential) as session:
                    return (await session.run(f"sleep 0.3; echo {n}")).stdout

            assert await asyncio.gather(*(one(n) for n in range(3))) == ["0\n", "1\n", "2\n"]
            async with pool.session(target, credential) as session:
                result = await (await session.start("cat", stdin=b"input")).wait(10)
                after = await session.run("echo kept")

        assert result.stdout == "input"
        assert after.stdout == "kept\n"
        assert server.count(r"no more sessions") >= 1, server.log_text()
