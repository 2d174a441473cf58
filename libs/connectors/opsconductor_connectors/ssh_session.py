"""An authenticated SSH connection: run commands (streamed, cancellable) and upload files."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh

from opsconductor_connectors._net import elapsed_ms
from opsconductor_connectors.errors import ConnectorError, Stage, timeout_error
from opsconductor_connectors.results import CommandResult, StreamName, UploadResult
from opsconductor_connectors.running import (
    DEFAULT_MAX_CAPTURE_BYTES,
    OutputCallback,
    RunningCommand,
)

_UPLOAD_BLOCK = 256 * 1024
# How long a stop waits for a starting command's PID line (the login shell's profile runs first).
PID_WAIT_S = 30.0
# A command stopped because its session goes away (or its start was cut short): TERM, and KILL
# this soon after; nobody waits for its output any more.
ABANDONED_GRACE_S = 0.2
_PID_LINE_MAX = 64  # "opsc-pid-<12 hex> <pid>"
# Shells kept open on a connection between commands. Few: each holds one of the server's
# sessions (OpenSSH's MaxSessions, 10 by default) and a process there.
MAX_IDLE_SHELLS = 4
# sshd frees a session a moment after its channel has closed (once it has reaped the process):
# a refused session open with no kept shell to give back is tried again every SESSION_RETRY_S
# for up to SESSION_RETRY_WINDOW_S.
SESSION_RETRY_S = 0.1
SESSION_RETRY_WINDOW_S = 2.0
# After a command's own shell code has exited in a kept shell, what it left running may still
# print: that output is the command's while it comes with gaps shorter than this. Then the
# command is done and its shell, which waits on them, is ended (they are not stopped).
LEFTOVER_QUIET_S = 1.0


# Reads the whole command text from standard input with builtins only (no process to fork),
# then runs it as `sh -c` would; the input is at its end by then, as `stdin=b""` promises.
_READ_AND_RUN = (
    'opsc_text=; while IFS= read -r opsc_line; do opsc_text="$opsc_text$opsc_line\n"; done;'
    ' eval "$opsc_text$opsc_line"'
)


class SshCommand(RunningCommand):
    """A command running in its own SSH channel.

    OpenSSH refuses "signal" requests in sessions that run in its privileged monitor, which is
    every root login. So when the remote shell is POSIX the command is prefixed with one line
    that reports the shell's PID on stderr (stripped here, never shown), and `_terminate` also
    kills that process group through a second channel.
    """

    def __init__(self, session: SshSession, pid_marker: bytes | None, *, pid_pending: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session = session
        self._channel: asyncssh.SSHClientChannel[bytes] | None = None
        self._shell: _Shell | None = None  # the kept shell it runs in, if any
        self._exit_status: int | None = None
        self._exit_sig: str | None = None
        self._pid_marker = pid_marker
        self._stderr_head = b""  # stderr not yet shown: it may hold the PID line
        self._mid_line = False  # the head continues a line already shown
        self.remote_pid: int | None = None
        self._pid_settled = asyncio.Event()  # the PID line arrived, or never will
        if pid_marker is None and not pid_pending:
            self._pid_settled.set()

    def _stderr(self, data: bytes) -> None:
        if self._pid_marker is None:
            self._feed("stderr", data)
            return
        # The login shell's profile may write to stderr before the PID line comes (pyenv does
        # when many logins start at once): show those lines and keep looking for it.
        self._stderr_head += data
        while self._pid_marker is not None and self._stderr_head:
            line, newline, rest = self._stderr_head.partition(b"\n")
            if not newline:
                if self._mid_line or len(line) > _PID_LINE_MAX:  # cannot be the PID line
                    self._feed("stderr", line)
                    self._stderr_head, self._mid_line = b"", True
                return
            self._stderr_head = rest
            number = line[len(self._pid_marker) :]
            if not self._mid_line and line.startswith(self._pid_marker) and number.isdigit():
                self.remote_pid = int(number)
                self._pid_marker = None
                self._pid_settled.set()
            else:
                self._feed("stderr", line + newline)
            self._mid_line = False
        if self._pid_marker is None and self._stderr_head:
            head, self._stderr_head = self._stderr_head, b""
            self._feed("stderr", head)

    def _flush_stderr(self) -> None:
        if self._pid_marker is not None and self._stderr_head:
            head, self._stderr_head, self._pid_marker = self._stderr_head, b"", None
            self._feed("stderr", head)
        self._pid_settled.set()

    def _pause_reading(self) -> None:
        if self._channel is not None:
            self._channel.pause_reading()

    def _resume_reading(self) -> None:
        if self._channel is not None:
            self._channel.resume_reading()

    async def _terminate(self, grace_s: float) -> None:
        channel = self._channel
        if channel is None or self.done:
            return
        if self._shell is not None:
            # Its process group is the shell's: the shell goes with it, never to be reused.
            self._shell.retire()
        # OpenSSH refuses signals in root sessions (and logs each refusal); there the group
        # kill of a POSIX shell does the work. Other servers and shells are still asked.
        ssh_signals = not (self._session.username == "root" and self._session.posix_shell)
        if not self._pid_settled.is_set():
            # The login shell has not reported its PID yet: its profile may take seconds (more
            # when many logins start at once). Where sshd allows signals this ends it now;
            # otherwise wait for the PID, since closing the channel instead would drop that
            # line while the shell goes on to run the command.
            if ssh_signals:
                with contextlib.suppress(OSError, asyncssh.Error):
                    channel.send_signal("TERM")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PID_WAIT_S):
                    await self._pid_settled.wait()
        for signal_name, wait_s in (("TERM", grace_s), ("KILL", 2.0)):
            if ssh_signals:
                with contextlib.suppress(OSError, asyncssh.Error):
                    channel.send_signal(signal_name)
            await self._signal_group(signal_name, wait_s)
            if self.done:
                return
        channel.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await channel.wait_closed()


    async def _signal_group(self, signal_name: str, wait_s: float) -> None:
        """Signal the process group and wait for the end: at once if the SSH signal already
        ended the command, else up to `wait_s` after the group was signalled."""
        ended = asyncio.ensure_future(self._done.wait())
        killer = None
        if self.remote_pid is not None:
            killer = asyncio.ensure_future(self._session._send_signal(self.remote_pid, signal_name))
        try:
            if killer is not None:
                await asyncio.wait({killer, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not self.done:
                await asyncio.wait({ended}, timeout=wait_s)
        finally:
            ended.cancel()
            if killer is not None and not killer.done():
                self._session._keep(killer)  # let it finish: the group may outlive the shell


class _ChannelHandler(asyncssh.SSHClientSession[bytes]):
    def __init__(self, command: SshCommand) -> None:
        self._command = command

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._command._stderr(data)
        else:
            self._command._feed("stdout", data)

    def exit_status_received(self, status: int) -> None:
        self._command._exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._command._exit_sig = signal

    def connection_lost(self, exc: Exception | None) -> None:
        command = self._command
        command._flush_stderr()
        error = None
        if exc is not None and command._exit_status is None and command._exit_sig is None:
            error = ConnectorError(Stage.COMMAND, "the connection was lost while the command ran")
        command._finish(command._exit_status, command._exit_sig, error)


class _Shell(asyncssh.SSHClientSession[bytes]):
    """The remote user's shell kept open on one channel; it runs commands one at a time.

    Opening an SSH session makes sshd fork and set up a process for it, which costs more server
    CPU than most commands do; a kept shell forks only the command's subshell. When it opens,
    the shell makes a pipe it keeps the reading end of (fd 7: a FIFO, removed at once and
    reopened through /proc, so nothing is left on disk); where it cannot (no mkfifo, no
    /proc), the connection runs its commands in sessions of their own.
    Each command runs in a subshell (`cd`, variables and `exit` stay inside it) with standard
    input from /dev/null, as an exec session with its input closed at once would have it. It
    holds the writing end of that pipe (fd 9): when the subshell exits, the shell reports its
    exit code at once, then reads the pipe and reports the end once every process the command
    started has exited or let go of it, so nothing they print reaches a later command. Until then
    their output is the command's, as in an exec session whose output is still held open; but
    one quiet for LEFTOVER_QUIET_S (a daemon started in the background with its output sent
    elsewhere, which an exec session would not wait for) ends the command, and the shell that
    waits on it is ended, alone. These lines hold a random per-shell token, which no output
    holds by chance.
    What the shell's start-up prints goes to its first command, as it would in an exec session.
    Output while no command runs (something that escaped that wait) retires the shell, as does
    a stop: the stop signals the shell's process group, which is the shell itself.
    """

    def __init__(self, session: SshSession) -> None:
        self._session = session
        self._token = f"\x1eopsc-{secrets.token_hex(12)}"
        self._marker = self._token.encode()
        self.channel: asyncssh.SSHClientChannel[bytes] | None = None
        self.pid: int | None = None
        # Whether the shell made its pipe (see setup_line); False if it ended first.
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.command: SshCommand | None = None
        self.retired = False
        self._early: list[tuple[StreamName, bytes]] | None = []  # before the first command
        self._held = {"stdout": b"", "stderr": b""}  # may end with the start of a token line
        self._exited = False  # this command's subshell exited
        self._ended = {"stdout": False, "stderr": False}  # ... and nothing holds the pipe
        self._quiet_timer: asyncio.TimerHandle | None = None  # for what it left running
        self._exit_code: int | None = None
        self._exit_status: int | None = None
        self._exit_sig: str | None = None
        # The text around each command (see wrap), built once per shell. The shell itself reads
        # the pipe once the subshell has exited: no process but the subshell is forked.
        # The exit code goes out on stderr as the subshell ends, the end on both streams once
        # nothing holds the pipe: in the usual case all of it within one wake-up of sshd.
        token = self._printf_token()
        self._wrap_head = "( eval "
        self._wrap_tail = (
            f" ) </dev/null 9>/proc/$$/fd/7 7<&-; printf '{token} rc %s\\n' \"$?\" >&2;"
            f" while read -r opsc_rest; do :; done <&7;"
            f" printf '{token} end\\n'; printf '{token} end\\n' >&2\n"
        )

    def startup_command(self) -> str:
        """Report the shell's PID (its process group: sshd starts each session in its own),
        then become the account's own login shell reading commands from this channel."""
        return f"printf '{self._printf_token()} pid %s\\n' \"$$\"; exec \"${{SHELL:-/bin/sh}}\""

    def setup_line(self) -> bytes:
        """The shell's first input: make the pipe and say whether it has it. The FIFO's name is
        random and mkfifo fails on anything already there (a planted link included); it is
        opened for reading and writing (which never waits), then for reading, then the first is
        closed, and removed: the shell keeps a reading end with no writer. Opened by the shell
        itself, so it survives whatever the start-up shell would close on exec."""
        token = self._printf_token()
        fifo = f'"${{TMPDIR:-/tmp}}/opsc-{secrets.token_hex(12)}"'
        return (
            f"mkfifo -m 600 {fifo} 2>/dev/null && {{ exec 6<>{fifo} 7<{fifo} 6>&-; rm -f {fifo}; }};"
            f" if [ -p /proc/$$/fd/7 ]; then printf '{token} pipe\\n';"
            f" else printf '{token} nopipe\\n'; fi\n"
        ).encode()

    def _printf_token(self) -> str:
        return "\\036" + self._token[1:]

    def wrap(self, command: str) -> bytes:
        return (self._wrap_head + shlex.quote(command) + self._wrap_tail).encode()

    def run(self, command: SshCommand, text: str) -> None:
        """Send `text` to run as `command`; raises, with nothing attached, if the shell is gone."""
        assert self.channel is not None and self.command is None
        self.channel.write(self.wrap(text))  # its output is read by the loop, after this returns
        self.command = command
        self._exited = False
        self._ended = {"stdout": False, "stderr": False}
        self._exit_code = None
        command._shell = self
        command._channel = self.channel
        self._share_pid()
        early, self._early = self._early or [], None
        for stream, data in early:
            command._feed(stream, data)

    def _share_pid(self) -> None:
        if self.command is not None and self.pid is not None:
            self.command.remote_pid = self.pid
            self.command._pid_settled.set()

    def retire(self) -> None:
        """Never reuse it; it ends when its process group is stopped or the channel closes."""
        self.retired = True
        self._session._forget_shell(self)

    def close(self) -> None:
        self.retire()
        if self.channel is not None:
            self.channel.close()

    # --- channel callbacks ----------------------------------------------------------------------

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        stream: StreamName = "stderr" if datatype == asyncssh.EXTENDED_DATA_STDERR else "stdout"
        buffer = self._held[stream] + data
        while (at := buffer.find(self._marker)) >= 0:
            line_end = buffer.find(b"\n", at)
            if line_end < 0:
                break
            self._show(stream, buffer[:at])
            self._token_line(stream, buffer[at + len(self._marker):line_end].split())
            buffer = buffer[line_end + 1:]
        else:
            at = _partial_marker_at(buffer, self._marker)
        self._show(stream, buffer[:at])
        self._held[stream] = buffer[at:]
        if self.command is None:
            return
        if all(self._ended.values()):
            self._finished(self.command)
        elif self._exited:
            self._wait_for_quiet()  # (again): it left something running that holds the pipe

    def _wait_for_quiet(self) -> None:
        self._stop_quiet_timer()
        self._quiet_timer = asyncio.get_running_loop().call_later(LEFTOVER_QUIET_S, self._quiet)

    def _stop_quiet_timer(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None

    def _quiet(self) -> None:
        self._quiet_timer = None
        if self.command is None:
            return
        self.retire()  # what the command left running still holds it
        self._finished(self.command)
        if self.pid is not None:
            # The shell waits on them; until it ends, sshd keeps its session (MaxSessions), and
            # closing the channel does not end it. Only the shell: they, in its process group,
            # go on.
            session = self._session
            session._keep(asyncio.ensure_future(session._send_signal(self.pid, "KILL", group=False)))

    def _finished(self, command: SshCommand) -> None:
        self._stop_quiet_timer()
        self.command, command._shell, command._channel = None, None, None
        if command._paused:
            # Its reader paused the channel; nothing more comes for it, the next command's
            # output must flow.
            command._paused = False
            if self.channel is not None:
                self.channel.resume_reading()
        command._finish(self._exit_code)
        self._session._shell_idle(self)

    def _token_line(self, stream: StreamName, words: list[bytes]) -> None:
        if words[:1] == [b"pid"] and len(words) == 2 and words[1].isdigit():
            self.pid = int(words[1])
            self._share_pid()
        elif words[:1] == [b"rc"]:
            self._exited = True
            if len(words) == 2 and words[1].isdigit():
                self._exit_code = int(words[1])
        elif words[:1] == [b"end"]:
            self._ended[stream] = True
        elif words in ([b"pipe"], [b"nopipe"]) and not self.ready.done():
            self.ready.set_result(words == [b"pipe"])

    def _show(self, stream: StreamName, data: bytes) -> None:
        if not data:
            return
        if self.command is not None:
            self.command._feed(stream, data)
        elif self._early is not None:
            self._early.append((stream, data))
        elif not self.retired:
            # Something a finished command left behind still writes here: no later command
            # may show it, so this shell is done.
            self.close()

    def exit_status_received(self, status: int) -> None:
        self._exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._exit_sig = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.retire()
        self._stop_quiet_timer()
        if not self.ready.done():
            self.ready.set_result(False)
        command, self.command = self.command, None
        if command is None:
            return
        for stream, held in self._held.items():
            if held:
                command._feed(stream, held)  # type: ignore[arg-type]
        command._flush_stderr()
        if self._exited:  # only what it left running was still awaited
            command._finish(self._exit_code)
            return
        error = None
        if exc is not None and self._exit_status is None and self._exit_sig is None:
            error = ConnectorError(Stage.COMMAND, "the connection was lost while the command ran")
        elif self._exit_status is None and self._exit_sig is None:
            error = ConnectorError(Stage.COMMAND, "the remote shell ended while the command ran")
        command._finish(self._exit_status, self._exit_sig, error)


def _partial_marker_at(buffer: bytes, marker: bytes) -> int:
    """Where the start of a token may end `buffer` (held until the rest comes), else its length.
    The token's first byte occurs nowhere else in it, so only the last such byte can start one."""
    start = buffer.rfind(marker[:1], max(0, len(buffer) - len(marker) + 1))
    return start if start >= 0 and marker.startswith(buffer[start:]) else len(buffer)


class SshSession:
    """One authenticated connection; many commands may run in it, one channel each."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        *,
        host: str,
        port: int,
        username: str,
        host_key_fingerprint: str,
        timings: dict[str, float],
        default_timeout_s: float | None = None,
        posix_shell: bool = True,
    ) -> None:
        self._conn = conn
        self.posix_shell = posix_shell
        # Commands without input or environment run in kept shells (see _Shell); the pool
        # turns this on, a one-off session has nothing to keep them for.
        self.reuse_shells = False
        # A connection's first command runs in a session of its own: a kept shell costs the
        # server more than that session until a second command reuses it, and a cold fan-out
        # runs one command per connection.
        self._commands_started = 0
        self._idle_shells: list[_Shell] = []
        self._running: weakref.WeakSet[SshCommand] = weakref.WeakSet()
        self._tasks: set[asyncio.Future[Any]] = set()  # kill commands still on their way
        self.host = host
        self.port = port
        self.username = username
        self.host_key_fingerprint = host_key_fingerprint
        self.timings = timings
        self.default_timeout_s = default_timeout_s

    @property
    def closed(self) -> bool:
        return self._conn.is_closed()

    @property
    def local_port(self) -> int | None:
        """The client side TCP port (lets a test match this connection in the server's log)."""
        sockname = self._conn.get_extra_info("sockname")
        return int(sockname[1]) if sockname else None

    async def start(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        stream: bool = True,
        env: dict[str, str] | None = None,
        max_capture_bytes: int = DEFAULT_MAX_CAPTURE_BYTES,
        stdin: bytes | None = None,
        private: bool = False,
    ) -> SshCommand:
        """Start `command` in the remote user's shell; iterate the result for its output.

        With `stdin`, those bytes are the command's standard input, then end of file (b"" closes
        it at once, so a command that reads it does not wait forever). `private` (the text holds
        secrets) with `stdin=b""` sends the text as input, never on the server's command line:
        `ps` there shows those to every account.
        """
        self._commands_started += 1
        if (self.reuse_shells and self._commands_started > 1 and self.posix_shell
                and stdin == b"" and not env):
            in_shell = await self._start_in_shell(
                command, on_output=on_output, stream=stream, max_capture_bytes=max_capture_bytes)
            if in_shell is not None:
                return in_shell
        marker = None
        if self.posix_shell:
            marker = f"opsc-pid-{secrets.token_hex(6)} ".encode()
            pid_line = f"printf '%s%s\\n' '{marker.decode()}' \"$$\" >&2\n"
            if private and stdin == b"":
                # Read and run by the shell itself. Only then: `eval` costs a fork where `sh -c`
                # would exec the last command in place (about 8 % of a cold fan-out).
                command, stdin = pid_line + _READ_AND_RUN, command.encode()
            else:
                # The command keeps a line of its own, so the shell parses it exactly as given.
                command = pid_line + command
        running = SshCommand(
            self, marker, on_output=on_output, stream=stream, max_capture_bytes=max_capture_bytes
        )
        environment: dict[bytes | str, bytes | str] = {k: v for k, v in (env or {}).items()}
        opening = asyncio.ensure_future(self._open_channel(
            lambda: _ChannelHandler(running), command, environment))
        try:
            channel, _ = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The server may already run the command: once its start completes, stop it.
            self._keep(asyncio.ensure_future(self._stop_when_started(opening, running)))
            raise
        except (asyncssh.Error, OSError) as exc:
            raise _not_started(exc) from None
        self._track(running, channel)
        if stdin is not None:
            with contextlib.suppress(OSError, asyncssh.Error):  # it may already have exited
                if stdin:
                    channel.write(stdin)
                channel.write_eof()
        return running

    async def _open_channel(self, factory: Callable[[], asyncssh.SSHClientSession[bytes]],
                            command: str, env: dict[bytes | str, bytes | str] | None = None) -> Any:
        deadline = time.monotonic() + SESSION_RETRY_WINDOW_S
        while True:
            try:
                return await self._conn.create_session(factory, command, env=env or (), encoding=None)
            except asyncssh.ChannelOpenError:
                if time.monotonic() >= deadline:
                    raise
            # Refused, likely at the server's session limit: give back the kept shells, or
            # give it time to free a session that has just ended.
            if self._idle_shells:
                await self._close_idle_shells()
            else:
                await asyncio.sleep(SESSION_RETRY_S)

    async def _close_idle_shells(self) -> None:
        """Close the idle shells; their server sessions are free once their channels closed."""
        shells, self._idle_shells = self._idle_shells, []
        for shell in shells:
            shell.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*(s.channel.wait_closed() for s in shells if s.channel is not None))

    async def _start_in_shell(self, command: str, *, on_output: OutputCallback | None,
                              stream: bool, max_capture_bytes: int) -> SshCommand | None:
        """The command started in a kept shell; None if this server cannot keep one."""
        running = SshCommand(self, None, pid_pending=True, on_output=on_output, stream=stream,
                             max_capture_bytes=max_capture_bytes)
        while True:
            reused = bool(self._idle_shells)
            shell = self._idle_shells.pop() if reused else await self._open_shell()
            if shell is None:
                return None
            try:
                shell.run(running, command)
            except (asyncssh.Error, OSError) as exc:
                shell.close()
                if reused:  # it ended while idle: the next one, or a new one
                    continue
                raise _not_started(exc) from None
            self._running.add(running)
            return running

    async def _open_shell(self) -> _Shell | None:
        """A new kept shell with its pipe; None (and no more tries on this connection) if the
        shell could not make one or ended first."""
        shell = _Shell(self)
        opening = asyncio.ensure_future(self._open_channel(lambda: shell, shell.startup_command()))
        try:
            shell.channel, _ = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Nothing runs in it yet: close it once it is open.
            opening.add_done_callback(lambda f: _close_opened(f, shell))
            raise
        except (asyncssh.Error, OSError) as exc:
            raise _not_started(exc) from None
        try:
            shell.channel.write(shell.setup_line())
            # Its start-up (the account's shell files) runs first; a shell that never answers is
            # not kept.
            async with asyncio.timeout(PID_WAIT_S):
                ready = await asyncio.shield(shell.ready)
        except (asyncssh.Error, OSError, TimeoutError):
            ready = False
        except asyncio.CancelledError:
            shell.close()
            raise
        if not ready:
            shell.close()
            self.reuse_shells = False
            return None
        return shell

    def _shell_idle(self, shell: _Shell) -> None:
        if shell.retired or self.closed or len(self._idle_shells) >= MAX_IDLE_SHELLS:
            shell.close()
        else:
            self._idle_shells.append(shell)

    def _forget_shell(self, shell: _Shell) -> None:
        with contextlib.suppress(ValueError):
            self._idle_shells.remove(shell)

    async def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        env: dict[str, str] | None = None,
        grace_s: float = 2.0,
        private: bool = False,
    ) -> CommandResult:
        """Run to completion with no input; past the timeout it is killed and TIMEOUT raised."""
        running = await self.start(command, on_output=on_output, stream=False, env=env, stdin=b"",
                                   private=private)
        limit = timeout_s if timeout_s is not None else self.default_timeout_s
        return await running.wait(limit, grace_s=grace_s)

    async def upload(
        self,
        source: bytes | Path,
        destination: str,
        *,
        mode: int = 0o644,
        timeout_s: float | None = None,
    ) -> UploadResult:
        """Write `source` to `destination` over SFTP with `mode`; replaced atomically by rename."""
        started = time.monotonic()
        limit = timeout_s if timeout_s is not None else self.default_timeout_s
        try:
            async with asyncio.timeout(limit):
                size = await self._upload(source, destination, mode)
        except TimeoutError:
            raise timeout_error(Stage.COMMAND, limit or 0.0) from None
        except (asyncssh.Error, OSError) as exc:
            reason = exc.reason if isinstance(exc, asyncssh.Error) else (exc.strerror or type(exc).__name__)
            raise ConnectorError(Stage.COMMAND, f"upload to {destination} failed: {reason}") from None
        return UploadResult(destination, size, mode & 0o7777, elapsed_ms(started))

    async def _upload(self, source: bytes | Path, destination: str, mode: int) -> int:
        partial = f"{destination}.opsc-{secrets.token_hex(4)}.part"
        attrs = asyncssh.SFTPAttrs(permissions=0o600)  # widened only once the content is complete
        size = 0
        async with self._conn.start_sftp_client() as sftp:
            try:
                async with sftp.open(partial, "wb", attrs) as remote:
                    async for block in _blocks(source):
                        await remote.write(block)
                        size += len(block)
                await sftp.chmod(partial, mode & 0o7777)
                try:
                    await sftp.posix_rename(partial, destination)
                except asyncssh.SFTPOpUnsupported:
                    with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(destination)
                    await sftp.rename(partial, destination)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(partial)
                raise
        return size

    async def _stop_when_started(self, opening: asyncio.Future[Any], running: SshCommand) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            channel, _ = await opening
            self._track(running, channel)
            await running.cancel(grace_s=ABANDONED_GRACE_S)

    def _track(self, running: SshCommand, channel: Any) -> None:
        """The started command's channel; the session stops it if it closes first."""
        running._channel = channel
        self._running.add(running)

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_signal(self, pid: int, signal_name: str, *, group: bool = True) -> None:
        """Signal a command's process group (or one process) from a second channel (see
        SshCommand)."""
        kill = f"kill -{signal_name} {pid} 2>/dev/null"
        if group:
            kill = f"kill -{signal_name} -- -{pid} 2>/dev/null || {kill}"
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(5.0):
                channel, _ = await self._open_channel(asyncssh.SSHClientSession, kill)
                await channel.wait_closed()

    async def ping(self, timeout_s: float = 5.0) -> bool:
        """A round trip to the server (OpenSSH's keepalive request); False when it is gone."""
        if self.closed:
            return False
        try:
            # asyncssh's own keepalive uses this request; any reply (even "unsupported") is proof.
            async with asyncio.timeout(timeout_s):
                await self._conn._make_global_request(b"keepalive@openssh.com")
        except (TimeoutError, asyncssh.Error, OSError):
            return False
        return not self.closed

    async def close(self) -> None:
        """Stop commands still running (closing alone would leave them behind), then close."""
        running = [command for command in self._running if not command.done]
        if running and not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*(c.cancel(grace_s=ABANDONED_GRACE_S) for c in running),
                                         return_exceptions=True)
        if self._tasks and not self.closed:  # kill commands still on their way need the connection
            await asyncio.wait(set(self._tasks), timeout=5.0)
        self._conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._conn.wait_closed()

    async def __aenter__(self) -> SshSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _close_opened(opening: asyncio.Future[Any], shell: _Shell) -> None:
    if not opening.cancelled() and opening.exception() is None:
        shell.channel = opening.result()[0]
        shell.close()


def _not_started(exc: asyncssh.Error | OSError) -> ConnectorError:
    reason = exc.reason if isinstance(exc, asyncssh.Error) else type(exc).__name__
    return ConnectorError(Stage.COMMAND, f"the command could not be started: {reason}")


async def _blocks(source: bytes | Path) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        for offset in range(0, len(data), _UPLOAD_BLOCK):
            yield data[offset : offset + _UPLOAD_BLOCK]
        if not data:
            yield b""
        return
    handle = await asyncio.to_thread(Path(source).open, "rb")
    try:
        while block := await asyncio.to_thread(handle.read, _UPLOAD_BLOCK):
            yield block
    finally:
        handle.close()
