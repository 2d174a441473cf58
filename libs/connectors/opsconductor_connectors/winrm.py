"""WinRM through pywinrm, with the same result shape and error stages as SSH.

pywinrm is synchronous: every WS-Management exchange runs in a worker thread of a bounded pool,
and output travels to the event loop as it arrives (one WinRM Receive at a time). HTTPS with
certificate verification is the default; Basic authentication over plain HTTP is refused unless
the target explicitly allows it (tests), NTLM over HTTP always encrypts its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import requests
import winrm
from winrm import exceptions as winrm_errors

from opsconductor_connectors._net import elapsed_ms, resolve
from opsconductor_connectors.errors import ConnectorError, Stage, timeout_error
from opsconductor_connectors.results import CommandResult
from opsconductor_connectors.running import DEFAULT_MAX_CAPTURE_BYTES, OutputCallback, RunningCommand

_SHARED_EXECUTOR: ThreadPoolExecutor | None = None
# Raw bytes per Send: base64 in a SOAP envelope stays far below WinRM's 500 KB default.
STDIN_BLOCK = 64 * 1024
_EXECUTOR_LOCK = threading.Lock()


def shared_executor() -> ThreadPoolExecutor:
    """The worker threads WinRM calls block in (a running command holds one for its duration)."""
    global _SHARED_EXECUTOR
    with _EXECUTOR_LOCK:
        if _SHARED_EXECUTOR is None:
            _SHARED_EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="opsc-winrm")
        return _SHARED_EXECUTOR


@dataclass(frozen=True, slots=True)
class WinrmTarget:
    host: str
    port: int = 5986
    scheme: Literal["https", "http"] = "https"
    path: str = "/wsman"
    verify_tls: bool = True
    ca_path: str | None = None  # PEM bundle to trust instead of the system store
    allow_insecure_http: bool = False

    @property
    def endpoint(self) -> str:
        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True, repr=False)
class WinrmCredential:
    username: str
    password: str
    auth: Literal["ntlm", "basic"] = "ntlm"
    version: int | str = 0

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (self.password,)

    def __repr__(self) -> str:
        return f"WinrmCredential(username={self.username!r}, auth={self.auth!r})"


@dataclass(frozen=True, slots=True)
class WinrmTimeouts:
    resolve_s: float = 5.0
    auth_s: float = 30.0  # opening the shell: TLS, authentication, shell creation
    operation_s: int = 20  # how long one WinRM Receive may wait for output on the server
    command_s: float | None = None


class WinrmCommand(RunningCommand):
    """A command in its own WinRM shell; output is pulled by a worker thread."""

    def __init__(self, client: WinrmClient, command: str, stdin: bytes | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client
        self._command = command
        self._stdin = stdin
        self._shell_id: str | None = None
        self._command_id: str | None = None
        self._stop_requested = threading.Event()
        self._signalled = threading.Event()

    def _post(self, callback: Any, *args: Any) -> None:
        self._loop.call_soon_threadsafe(callback, *args)

    def _work(self, started: asyncio.Future[None]) -> None:
        """Runs in a worker thread: open shell, start, receive until done, clean up."""
        protocol = self._client._protocol()
        stage = Stage.AUTH
        mark = time.monotonic()
        try:
            self._shell_id = protocol.open_shell(codepage=65001)
            self.timings["auth"] = elapsed_ms(mark)
            if self._stop_requested.is_set():  # the caller gave up while the shell was opening
                return
            stage = Stage.COMMAND
            self._command_id = protocol.run_command(self._shell_id, self._command)
            self._post(_resolve_future, started, None)
            if self._stdin is not None:
                self._send_stdin(protocol)
            exit_code: int | None = None
            done = False
            while not done and not self._stop_requested.is_set():
                try:
                    out, err, code, done = protocol.get_command_output_raw(self._shell_id, self._command_id)
                except winrm_errors.WinRMOperationTimeoutError:
                    continue  # no output within the operation timeout: ask again
                if out:
                    self._post(self._feed, "stdout", out)
                if err:
                    self._post(self._feed, "stderr", err)
                if done:
                    exit_code = code
            self._post(self._finish, exit_code, None if done else "TERM", None)
        except Exception as exc:
            error = self._client._classify(exc, stage)
            self._post(_resolve_future, started, error)
            self._post(self._finish, None, None, error)
        finally:
            self._cleanup(protocol)

    def _send_stdin(self, protocol: winrm.Protocol) -> None:
        """The input in Send messages well under WinRM's default envelope size, then end."""
        assert self._shell_id is not None and self._command_id is not None and self._stdin is not None
        data = self._stdin
        offsets = range(0, len(data), STDIN_BLOCK) if data else range(1)
        for offset in offsets:
            if self._stop_requested.is_set():
                return
            last = offset + STDIN_BLOCK >= len(data)
            block = data[offset : offset + STDIN_BLOCK]
            protocol.send_command_input(self._shell_id, self._command_id, block, end=last)

    def _cleanup(self, protocol: winrm.Protocol) -> None:
        with contextlib.suppress(Exception):
            if self._shell_id and self._command_id and not self._signalled.is_set():
                protocol.cleanup_command(self._shell_id, self._command_id)
        with contextlib.suppress(Exception):
            if self._shell_id:
                protocol.close_shell(self._shell_id)

    async def _terminate(self, grace_s: float) -> None:
        self._stop_requested.set()
        if self._shell_id is None or self._command_id is None or self.done:
            return
        shell_id, command_id = self._shell_id, self._command_id

        def signal_terminate() -> None:
            # A second exchange: the worker thread may be blocked in a Receive.
            with contextlib.suppress(Exception):
                self._client._protocol().cleanup_command(shell_id, command_id)
                self._signalled.set()

        await self._loop.run_in_executor(self._client._executor, signal_terminate)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._done.wait()


def _resolve_future(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class WinrmClient:
    """Runs commands on one WinRM target with one credential (a shell per command)."""

    def __init__(
        self,
        target: WinrmTarget,
        credential: WinrmCredential,
        *,
        timeouts: WinrmTimeouts | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if target.scheme == "http" and credential.auth == "basic" and not target.allow_insecure_http:
            raise ConnectorError(
                Stage.CONNECT,
                "Basic authentication over plain HTTP would send the password in clear text;"
                " use HTTPS (port 5986)",
            )
        self.target = target
        self.credential = credential
        self.timeouts = timeouts or WinrmTimeouts()
        self._executor = executor or shared_executor()

    def _protocol(self) -> winrm.Protocol:
        target, credential = self.target, self.credential
        encrypt: Literal["always", "auto"] = (
            "always" if (target.scheme == "http" and credential.auth == "ntlm") else "auto"
        )
        return winrm.Protocol(
            target.endpoint,
            transport=credential.auth,
            username=credential.username,
            password=credential.password,
            server_cert_validation="validate" if target.verify_tls else "ignore",
            # None: the system store, never the environment (pywinrm's hint omits None).
            ca_trust_path=target.ca_path,  # type: ignore[arg-type]
            proxy=None,  # never an environment-defined proxy
            operation_timeout_sec=self.timeouts.operation_s,
            read_timeout_sec=self.timeouts.operation_s + 10,
            message_encryption=encrypt,
        )

    def _classify(self, exc: BaseException, stage: Stage) -> ConnectorError:
        secrets = self.credential.secrets
        if isinstance(exc, ConnectorError):
            return exc
        if isinstance(exc, winrm_errors.AuthenticationError):
            return ConnectorError(Stage.AUTH, "authentication failed: the server rejected the credentials")
        if isinstance(exc, requests.exceptions.SSLError):
            return ConnectorError(
                Stage.HOST_KEY,
                "the server's TLS certificate could not be verified; refusing to send credentials",
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return timeout_error(Stage.CONNECT, self.timeouts.operation_s + 10)
        if isinstance(exc, requests.exceptions.Timeout):
            return timeout_error(stage, self.timeouts.operation_s + 10)
        if isinstance(exc, requests.exceptions.ConnectionError):
            text = str(exc)
            if "NameResolution" in text or "Name or service not known" in text:
                return ConnectorError(Stage.RESOLVE, f"cannot resolve host {self.target.host!r}")
            return ConnectorError(
                Stage.CONNECT, f"cannot connect to {self.target.host} port {self.target.port}"
            )
        if isinstance(exc, winrm_errors.WSManFaultError):
            return ConnectorError(stage, f"WinRM fault: {exc.reason}", secrets=secrets)
        if isinstance(exc, winrm_errors.WinRMTransportError):
            return ConnectorError(stage, f"WinRM transport error: HTTP {exc.code}")
        return ConnectorError(stage, f"WinRM request failed: {type(exc).__name__}")

    async def start(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        stream: bool = True,
        max_capture_bytes: int = DEFAULT_MAX_CAPTURE_BYTES,
        stdin: bytes | None = None,
    ) -> WinrmCommand:
        """Open a shell and start `command`; raises with the stage that failed.

        With `stdin`, those bytes are sent as the command's input (WinRM Send), then end of input.
        """
        mark = time.monotonic()
        await resolve(self.target.host, self.target.port, self.timeouts.resolve_s)
        running = WinrmCommand(
            self,
            command,
            stdin,
            on_output=on_output,
            stream=stream,
            max_capture_bytes=max_capture_bytes,
        )
        running.timings["resolve"] = elapsed_ms(mark)
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        started.add_done_callback(lambda f: f.cancelled() or f.exception())  # may outlive us
        loop.run_in_executor(self._executor, running._work, started)
        try:
            async with asyncio.timeout(self.timeouts.auth_s):
                await asyncio.shield(started)
        except TimeoutError:
            running._stop_requested.set()
            raise timeout_error(Stage.AUTH, self.timeouts.auth_s) from None
        except BaseException:
            # Canceled while the shell opened: the worker must not run the command unattended
            # (it checks this flag before the command and between Receives, then terminates it).
            running._stop_requested.set()
            raise
        return running

    async def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        grace_s: float = 2.0,
    ) -> CommandResult:
        running = await self.start(command, on_output=on_output, stream=False)
        limit = timeout_s if timeout_s is not None else self.timeouts.command_s
        return await running.wait(limit, grace_s=grace_s)
