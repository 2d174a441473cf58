"""A WS-Management peer for tests: enough of WinRM's remote shell for pywinrm's real protocol.

There is no Windows here. This server speaks the SOAP that pywinrm sends (Create shell,
Command, Receive, Send, Signal, Delete) over HTTP or HTTPS with Basic authentication, and runs
each command with a local interpreter (`/bin/sh -c` by default) in its own process group, so a
client exercises WinRM's real exchange: shells, command ids, base64 output streams, the
operation-timeout fault during long Receives, exit codes and terminate signals.
Real Windows hosts were not tried against the connectors here.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import pytest

NS = {
    "env": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTIONS = {
    f"{TRANSFER}/Create": "Create",
    f"{TRANSFER}/Delete": "Delete",
    f"{SHELL}/Command": "Command",
    f"{SHELL}/Receive": "Receive",
    f"{SHELL}/Send": "Send",
    f"{SHELL}/Signal": "Signal",
}
OPERATION_TIMEOUT_FAULT = 2150858793
SHELL_NOT_FOUND_FAULT = 2150858843
_DURATION = re.compile(r"^PT(\d+(?:\.\d+)?)S$")


@dataclass
class _Command:
    process: subprocess.Popen[bytes]
    cond: threading.Condition = field(default_factory=threading.Condition)
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    open_streams: int = 2

    def pump(self, stream: str) -> None:
        pipe = self.process.stdout if stream == "stdout" else self.process.stderr
        assert pipe is not None
        while chunk := os.read(pipe.fileno(), 65536):  # whatever is there, without waiting for more
            with self.cond:
                getattr(self, stream).extend(chunk)
                self.cond.notify_all()
        with self.cond:
            self.open_streams -= 1
            self.cond.notify_all()

    @property
    def finished(self) -> bool:
        return self.open_streams == 0 and self.process.poll() is not None


class WinrmPeer:
    """The peer; `start()` serves in a daemon thread, `stop()` ends it and every process."""

    def __init__(
        self,
        *,
        username: str = "opsc-winrm",
        password: str | None = None,
        interpreter: Sequence[str] = ("/bin/sh", "-c"),
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        max_receive_wait_s: float | None = None,
    ) -> None:
        self.username = username
        self.password = password or "Wr-" + base64.urlsafe_b64encode(os.urandom(15)).decode()
        self.interpreter = list(interpreter)
        self.max_receive_wait_s = max_receive_wait_s
        self.requests: list[str] = []  # action names in arrival order
        self.auth_failures = 0
        self.shells: dict[str, dict[str, _Command]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/wsman"

    def start(self) -> WinrmPeer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            commands = [c for shell in self.shells.values() for c in shell.values()]
            self.shells.clear()
        for command in commands:
            _kill(command.process, signal.SIGKILL)

    def running_processes(self) -> list[int]:
        with self._lock:
            commands = [c for shell in self.shells.values() for c in shell.values()]
        return [c.process.pid for c in commands if c.process.poll() is None]

    def count(self, action: str) -> int:
        return self.requests.count(action)

    # --- authentication ------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.username) and hmac.compare_digest(password, self.password)

    # --- actions: each returns (HTTP status, SOAP body XML) -------------------------------------

    def handle(self, envelope: ET.Element) -> tuple[int, str, str]:
        action = _text(envelope, "env:Header/a:Action")
        name = ACTIONS.get(action, action)
        self.requests.append(name)
        shell_id = _text(envelope, "env:Header/w:SelectorSet/w:Selector[@Name='ShellId']")
        if name == "Create":
            shell_id = str(uuid.uuid4()).upper()
            with self._lock:
                self.shells[shell_id] = {}
            return 200, f"{TRANSFER}/CreateResponse", _created(shell_id, self.endpoint)
        with self._lock:
            shell = self.shells.get(shell_id)
        if shell is None:
            return 500, "", _fault(SHELL_NOT_FOUND_FAULT, "w:InvalidSelectors", "shell not found")
        body = envelope.find("env:Body", NS)
        assert body is not None
        if name == "Command":
            return self._command(shell, body)
        if name == "Receive":
            wait_s = _seconds(_text(envelope, "env:Header/w:OperationTimeout")) or 20.0
            if self.max_receive_wait_s is not None:
                wait_s = min(wait_s, self.max_receive_wait_s)
            return self._receive(shell, body, wait_s)
        if name == "Send":
            return self._send(shell, body)
        if name == "Signal":
            return self._signal(shell, body)
        if name == "Delete":
            with self._lock:
                commands = self.shells.pop(shell_id, {})
            for command in commands.values():
                _kill(command.process, signal.SIGKILL)
            return 200, f"{TRANSFER}/DeleteResponse", ""
        return 500, "", _fault(2150858817, "w:ActionNotSupported", f"unsupported action {action}")

    def _command(self, shell: dict[str, _Command], body: ET.Element) -> tuple[int, str, str]:
        line = body.find("rsp:CommandLine", NS)
        assert line is not None
        command = _text(line, "rsp:Command")
        arguments = [a.text or "" for a in line.findall("rsp:Arguments", NS)]
        command_line = " ".join([command, *arguments])  # as cmd.exe would see it
        process = subprocess.Popen(
            [*self.interpreter, command_line],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        running = _Command(process)
        for stream in ("stdout", "stderr"):
            threading.Thread(target=running.pump, args=(stream,), daemon=True).start()
        command_id = str(uuid.uuid4()).upper()
        shell[command_id] = running
        xml = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
        return 200, f"{SHELL}/CommandResponse", xml

    def _receive(self, shell: dict[str, _Command], body: ET.Element, wait_s: float) -> tuple[int, str, str]:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = desired.get("CommandId", "") if desired is not None else ""
        running = shell.get(command_id)
        if running is None:
            return 500, "", _fault(2150858843, "w:InvalidSelectors", "command not found")
        deadline = time.monotonic() + wait_s
        with running.cond:
            while not running.stdout and not running.stderr and not running.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 500, "", _fault(OPERATION_TIMEOUT_FAULT, "w:TimedOut", "operation timed out")
                running.cond.wait(min(remaining, 0.05))  # poll(): exit is not a pipe event
            out, err = bytes(running.stdout), bytes(running.stderr)
            running.stdout.clear()
            running.stderr.clear()
            finished = running.finished
        parts = []
        for name, data in (("stdout", out), ("stderr", err)):
            if data:
                encoded = base64.b64encode(data).decode()
                parts.append(f'<rsp:Stream Name="{name}" CommandId="{command_id}">{encoded}</rsp:Stream>')
        if finished:
            code = running.process.returncode
            exit_code = code if code >= 0 else 128 - code
            parts.extend(
                f'<rsp:Stream Name="{name}" CommandId="{command_id}" End="true"></rsp:Stream>'
                for name in ("stdout", "stderr")
            )
            parts.append(
                f'<rsp:CommandState CommandId="{command_id}" State="{SHELL}/CommandState/Done">'
                f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            parts.append(f'<rsp:CommandState CommandId="{command_id}" State="{SHELL}/CommandState/Running"/>')
        xml = f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"
        return 200, f"{SHELL}/ReceiveResponse", xml

    def _send(self, shell: dict[str, _Command], body: ET.Element) -> tuple[int, str, str]:
        stream = body.find("rsp:Send/rsp:Stream", NS)
        running = shell.get(stream.get("CommandId", "")) if stream is not None else None
        if stream is None or running is None or running.process.stdin is None:
            return 500, "", _fault(2150858843, "w:InvalidSelectors", "command not found")
        with contextlib.suppress(OSError):
            running.process.stdin.write(base64.b64decode(stream.text or ""))
            running.process.stdin.flush()
            if stream.get("End") == "true":
                running.process.stdin.close()
        return 200, f"{SHELL}/SendResponse", "<rsp:SendResponse/>"

    def _signal(self, shell: dict[str, _Command], body: ET.Element) -> tuple[int, str, str]:
        element = body.find("rsp:Signal", NS)
        running = shell.get(element.get("CommandId", "")) if element is not None else None
        code = _text(element, "rsp:Code") if element is not None else ""
        if running is not None:
            _kill(running.process, signal.SIGINT if code.endswith("ctrl_c") else signal.SIGKILL)
        return 200, f"{SHELL}/SignalResponse", "<rsp:SignalResponse/>"


def _kill(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


def _text(element: ET.Element, path: str) -> str:
    found = element.find(path, NS)
    return (found.text or "").strip() if found is not None else ""


def _seconds(duration: str) -> float | None:
    match = _DURATION.match(duration)
    return float(match.group(1)) if match else None


def _created(shell_id: str, endpoint: str) -> str:
    return (
        f"<x:ResourceCreated><a:Address>{escape(endpoint)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{SHELL}/cmd</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
        f"</a:ReferenceParameters></x:ResourceCreated>"
        f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:ResourceUri>{SHELL}/cmd"
        f"</rsp:ResourceUri><rsp:State>Connected</rsp:State></rsp:Shell>"
    )


def _fault(code: int, subcode: str, message: str) -> str:
    return (
        f"<env:Fault><env:Code><env:Value>env:Receiver</env:Value><env:Subcode>"
        f"<env:Value>{subcode}</env:Value></env:Subcode></env:Code><env:Reason>"
        f'<env:Text xml:lang="en-US">{escape(message)}</env:Text></env:Reason><env:Detail>'
        f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
        f'Code="{code}" Machine="opsc-winrm-peer"><f:Message>{escape(message)}</f:Message>'
        f"</f:WSManFault></env:Detail></env:Fault>"
    )


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    header = (
        f"<a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        if action
        else f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
    )
    namespaces = " ".join(f"xmlns:{prefix}={quoteattr(uri)}" for prefix, uri in {**NS, "x": TRANSFER}.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xml:lang="en-US" {namespaces}>'
        f"<env:Header>{header}</env:Header><env:Body>{body}</env:Body></env:Envelope>"
    ).encode()


def _handler_for(peer: WinrmPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # pywinrm keeps its connection alive between requests

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: tests read `peer.requests` instead."""

        def _reply(self, status: int, payload: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/wsman":
                self._reply(404, b"")
                return
            if not peer.authorized(self.headers.get("Authorization")):
                peer.auth_failures += 1
                self._reply(401, b"", {"WWW-Authenticate": 'Basic realm="WSMAN"'})
                return
            try:
                envelope = ET.fromstring(raw)  # noqa: S314 - trusted test client
            except ET.ParseError:
                self._reply(400, b"")
                return
            message_id = _text(envelope, "env:Header/a:MessageID")
            status, action, body = peer.handle(envelope)
            self._reply(status, _envelope(action, message_id, body))

    return Handler


@pytest.fixture
def winrm_peer() -> Iterator[WinrmPeer]:
    """A WS-Management peer over plain HTTP with Basic auth on a free loopback port."""
    peer = WinrmPeer().start()
    try:
        yield peer
    finally:
        peer.stop()
