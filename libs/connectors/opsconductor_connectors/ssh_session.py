"""An authenticated SSH connection: run commands (streamed, cancellable) and upload files."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh

from opsconductor_connectors._net import elapsed_ms
from opsconductor_connectors.errors import ConnectorError, Stage, timeout_error
from opsconductor_connectors.results import CommandResult, UploadResult
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


class SshCommand(RunningCommand):
    """A command running in its own SSH channel.

    OpenSSH refuses "signal" requests in sessions that run in its privileged monitor, which is
    every root login. So when the remote shell is POSIX the command is prefixed with one line
    that reports the shell's PID on stderr (stripped here, never shown), and `_terminate` also
    kills that process group through a second channel.
    """

    def __init__(self, session: SshSession, pid_marker: bytes | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session = session
        self._channel: asyncssh.SSHClientChannel[bytes] | None = None
        self._exit_status: int | None = None
        self._exit_sig: str | None = None
        self._pid_marker = pid_marker
        self._stderr_head = b""  # stderr not yet shown: it may hold the PID line
        self._mid_line = False  # the head continues a line already shown
        self.remote_pid: int | None = None
        self._pid_settled = asyncio.Event()  # the PID line arrived, or never will
        if pid_marker is None:
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
            killer = asyncio.ensure_future(self._session._kill_process_group(self.remote_pid, signal_name))
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
    ) -> SshCommand:
        """Start `command` in the remote user's shell; iterate the result for its output.

        With `stdin`, those bytes are the command's standard input, then end of file (b"" closes
        it at once, so a command that reads it does not wait forever).
        """
        marker = None
        if self.posix_shell:
            marker = f"opsc-pid-{secrets.token_hex(6)} ".encode()
            # The command keeps a line of its own, so the shell parses it exactly as given.
            command = f"printf '%s%s\\n' '{marker.decode()}' \"$$\" >&2\n{command}"
        running = SshCommand(
            self, marker, on_output=on_output, stream=stream, max_capture_bytes=max_capture_bytes
        )
        environment: dict[bytes | str, bytes | str] = {k: v for k, v in (env or {}).items()}
        opening = asyncio.ensure_future(self._conn.create_session(
            lambda: _ChannelHandler(running), command, env=environment or (), encoding=None
        ))
        try:
            channel, _ = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The server may already run the command: once its start completes, stop it.
            self._keep(asyncio.ensure_future(self._stop_when_started(opening, running)))
            raise
        except (asyncssh.Error, OSError) as exc:
            reason = exc.reason if isinstance(exc, asyncssh.Error) else type(exc).__name__
            raise ConnectorError(Stage.COMMAND, f"the command could not be started: {reason}") from None
        self._track(running, channel)
        if stdin is not None:
            with contextlib.suppress(OSError, asyncssh.Error):  # it may already have exited
                if stdin:
                    channel.write(stdin)
                channel.write_eof()
        return running

    async def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        env: dict[str, str] | None = None,
        grace_s: float = 2.0,
    ) -> CommandResult:
        """Run to completion; past the timeout the command is killed and TIMEOUT raised."""
        running = await self.start(command, on_output=on_output, stream=False, env=env)
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

    async def _kill_process_group(self, pid: int, signal_name: str) -> None:
        """Signal a command's process group from a second channel (see SshCommand)."""
        kill = f"kill -{signal_name} -- -{pid} 2>/dev/null || kill -{signal_name} {pid} 2>/dev/null"
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(5.0):
                await self._conn.run(kill, check=False)

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
