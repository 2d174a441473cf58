"""SSH through asyncssh: pinned host keys, key or password auth, timed stages, streamed commands.

Host keys are checked by `_PinnedClient.validate_host_public_key` against the operator's pin;
asyncssh is handed an empty, constructed trust list so it asks that callback about every key and
never reads ~/.ssh/known_hosts, ~/.ssh/config, an agent or default key files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from opsconductor_connectors._net import connect_tcp, elapsed_ms, resolve
from opsconductor_connectors.errors import ConnectorError, Stage, timeout_error
from opsconductor_connectors.hostkeys import HostKeyPin, HostKeyProbe, fingerprint
from opsconductor_connectors.ssh_session import SshSession

# One fixed order for "what key will this server present" so a probe and a later connection
# get the same key; no certificate algorithms (a pin is a key, not a CA).
DEFAULT_HOST_KEY_ALGS = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
]

# asyncssh's own choices, AES-GCM first: one AEAD call per packet (AES-NI) costs about half the
# CPU of chacha20-poly1305's several cipher set-ups, which matters across hundreds of sessions.
PREFERRED_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


class _HideCommands(logging.Filter):
    """asyncssh logs every command line at INFO; a command may carry a secret parameter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.endswith("Command: %s"):
            record.args = ("[hidden]",)
        return True


logging.getLogger("asyncssh").addFilter(_HideCommands())
_NO_TRUSTED_KEYS: tuple[list[Any], list[Any], list[Any]] = ([], [], [])


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int = 22
    host_key: HostKeyPin | None = None
    # False for servers whose login shell is not POSIX (e.g. Windows OpenSSH with cmd.exe).
    posix_shell: bool = True


@dataclass(frozen=True, slots=True, repr=False)
class SshCredential:
    """Who logs in; `version` changes whenever the secret does (pools key on it)."""

    username: str
    password: str | None = None
    private_key: str | None = None
    passphrase: str | None = None
    version: int | str = 0

    def __post_init__(self) -> None:
        if not self.username:
            raise ValueError("a user name is required")
        if self.password is None and self.private_key is None:
            raise ValueError("a password or a private key is required")

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (self.password, self.private_key, self.passphrase)

    def __repr__(self) -> str:
        kind = "key" if self.private_key else "password"
        return f"SshCredential(username={self.username!r}, {kind}, version={self.version!r})"


@dataclass(frozen=True, slots=True)
class SshTimeouts:
    resolve_s: float = 5.0
    connect_s: float = 10.0
    host_key_s: float = 10.0
    auth_s: float = 15.0
    command_s: float | None = None  # default for `run` when the caller gives none


class _PinnedClient(asyncssh.SSHClient):
    def __init__(self, pin: HostKeyPin | None) -> None:
        self.pin = pin
        self.presented: asyncssh.SSHKey | None = None
        self.key_checked = asyncio.Event()
        self.key_checked_at = 0.0

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        self.key_checked_at = time.monotonic()
        self.key_checked.set()
        return self.pin is not None and self.pin.matches(key)

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        return False

    @property
    def presented_fingerprint(self) -> str | None:
        return fingerprint(self.presented) if self.presented is not None else None


@dataclass(slots=True)
class _Handshake:
    conn: asyncssh.SSHClientConnection
    client: _PinnedClient
    timings: dict[str, float] = field(default_factory=dict)


def _load_key(credential: SshCredential) -> list[asyncssh.SSHKey] | None:
    if credential.private_key is None:
        return None
    try:
        return [asyncssh.import_private_key(credential.private_key, credential.passphrase)]
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError, TypeError):
        # `from None`: the parser's message may quote key material.
        raise ConnectorError(
            Stage.AUTH,
            "the private key cannot be read (malformed, or the passphrase is wrong)",
            secrets=credential.secrets,
        ) from None


async def _handshake(
    target: SshTarget,
    credential: SshCredential | None,
    timeouts: SshTimeouts,
    *,
    keepalive_s: float,
    client: _PinnedClient | None = None,
) -> _Handshake:
    """Resolve, connect, check the host key, authenticate; each stage timed and time-limited."""
    timings: dict[str, float] = {}
    client = client or _PinnedClient(target.host_key)
    try:
        return await _timed_handshake(target, credential, timeouts, keepalive_s, client, timings)
    except ConnectorError as exc:
        exc.timings = dict(timings)
        raise


async def _timed_handshake(
    target: SshTarget,
    credential: SshCredential | None,
    timeouts: SshTimeouts,
    keepalive_s: float,
    client: _PinnedClient,
    timings: dict[str, float],
) -> _Handshake:
    client_keys = _load_key(credential) if credential else None
    secrets = credential.secrets if credential else ()
    started = time.monotonic()
    addresses = await resolve(target.host, target.port, timeouts.resolve_s)
    timings["resolve"] = elapsed_ms(started)
    mark = time.monotonic()
    sock = await connect_tcp(addresses, target.host, target.port, timeouts.connect_s)
    timings["connect"] = elapsed_ms(mark)
    mark = time.monotonic()
    pin_algs = target.host_key.algorithms if target.host_key else None
    options: dict[str, Any] = {
        "known_hosts": _NO_TRUSTED_KEYS,
        "server_host_key_algs": pin_algs or DEFAULT_HOST_KEY_ALGS,
        "encryption_algs": PREFERRED_CIPHERS,
        "x509_trusted_certs": None,
        "config": None,
        "agent_path": None,
        "gss_host": None,
        "host_based_auth": False,
        "client_keys": client_keys,
        "password": credential.password if credential else None,
        "passphrase": None,
        "kbdint_auth": bool(credential and credential.password),
        "keepalive_interval": keepalive_s,
        "keepalive_count_max": 3,
        "username": credential.username if credential else "opsconductor-probe",
    }

    async def open_connection() -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            target.host, target.port, sock=sock, client_factory=lambda: client, **options
        )

    task = asyncio.create_task(open_connection())
    try:
        await _stage(task, client.key_checked, timeouts.host_key_s, Stage.HOST_KEY, client, secrets)
        await _stage(task, None, timeouts.auth_s, Stage.AUTH, client, secrets)
        timings["auth"] = elapsed_ms(client.key_checked_at)
    except BaseException:
        sock.close()
        raise
    finally:
        if client.key_checked.is_set():
            timings["host_key"] = (client.key_checked_at - mark) * 1000
    return _Handshake(task.result(), client, timings)


async def _stage(
    task: asyncio.Task[asyncssh.SSHClientConnection],
    reached: asyncio.Event | None,
    timeout_s: float,
    stage: Stage,
    client: _PinnedClient,
    secrets: tuple[str | None, ...],
) -> None:
    waiters: set[asyncio.Future[Any]] = {task}
    marker = asyncio.ensure_future(reached.wait()) if reached is not None else None
    if marker is not None:
        waiters.add(marker)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        if marker is not None:
            marker.cancel()
    if task in done:
        exc = task.exception()
        if exc is not None:
            raise _classify(exc, client, secrets) from None
        return
    if marker is not None and marker in done:
        return
    task.cancel()
    await asyncio.wait({task}, timeout=5.0)  # let it unwind; never re-raises its outcome
    raise timeout_error(stage, timeout_s, host_key_fingerprint=client.presented_fingerprint)


def _classify(exc: BaseException, client: _PinnedClient, secrets: tuple[str | None, ...]) -> ConnectorError:
    presented = client.presented_fingerprint
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) and presented:
        if client.pin is None:
            message = f"unknown host key {presented}: an operator must approve and pin it"
        else:
            message = (
                f"host key changed: the server presented {presented} but {client.pin.fingerprint}"
                " is pinned; refusing to connect"
            )
        return ConnectorError(Stage.HOST_KEY, message, host_key_fingerprint=presented)
    if isinstance(exc, asyncssh.KeyExchangeFailed | asyncssh.HostKeyNotVerifiable):
        return ConnectorError(
            Stage.HOST_KEY,
            "the server offers no host key of the pinned type; refusing to connect",
            host_key_fingerprint=presented,
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return ConnectorError(
            Stage.AUTH,
            "authentication failed: the server rejected the credentials",
            host_key_fingerprint=presented,
        )
    stage = Stage.AUTH if client.key_checked.is_set() else Stage.CONNECT
    reason = (
        exc.reason
        if isinstance(exc, asyncssh.Error)
        else (getattr(exc, "strerror", None) or type(exc).__name__)
    )
    return ConnectorError(
        stage,
        f"connection failed during {stage.value}: {reason}",
        host_key_fingerprint=presented,
        secrets=secrets,
    )


async def probe_host_key(host: str, port: int = 22, *, timeouts: SshTimeouts | None = None) -> HostKeyProbe:
    """The key `host` presents, without authenticating (for "approve this fingerprint").

    The handshake stops at the host key check: no credential is sent, nothing logs in.
    """
    started = time.monotonic()
    client = _PinnedClient(None)
    try:
        handshake = await _handshake(
            SshTarget(host, port), None, timeouts or SshTimeouts(), keepalive_s=0, client=client
        )
    except ConnectorError:
        if client.presented is None:
            raise
        key = client.presented
        return HostKeyProbe(
            fingerprint=fingerprint(key),
            public_key=key.export_public_key("openssh").decode().strip(),
            algorithm=key.get_algorithm(),
            latency_ms=elapsed_ms(started),
        )
    handshake.conn.close()  # pragma: no cover - an unpinned handshake cannot succeed
    raise ConnectorError(Stage.HOST_KEY, "the probe was not stopped at the host key check")


async def connect_ssh(
    target: SshTarget,
    credential: SshCredential,
    *,
    timeouts: SshTimeouts | None = None,
    keepalive_s: float = 30.0,
) -> SshSession:
    """An authenticated session; the target's pinned host key is required.

    Raises ConnectorError with the failing stage (resolve, connect, host_key, auth) or
    `timeout` with `during` set to the stage that ran out of time.
    """
    if target.host_key is None:
        raise ConnectorError(
            Stage.HOST_KEY, "no host key is pinned for this target: probe it and pin the key first"
        )
    timeouts = timeouts or SshTimeouts()
    handshake = await _handshake(target, credential, timeouts, keepalive_s=keepalive_s)
    return SshSession(
        handshake.conn,
        host=target.host,
        port=target.port,
        username=credential.username,
        host_key_fingerprint=target.host_key.fingerprint,
        timings=handshake.timings,
        default_timeout_s=timeouts.command_s,
        posix_shell=target.posix_shell,
    )
