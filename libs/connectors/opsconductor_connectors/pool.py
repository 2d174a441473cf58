"""A pool of authenticated SSH connections for the executor.

Connections are shared by key (host, port, user, credential version, pinned host key): many
commands, one TCP connection and one login. Each connection carries up to
`max_channels_per_connection` commands at once (OpenSSH's MaxSessions defaults to 10); a host
gets at most `max_per_host` connections, whoever they belong to, and further checkouts wait.
Idle connections close after `idle_timeout_s`; one idle for more than `ping_after_idle_s` is
checked with a round trip before it is handed out. With `reuse_shells` a connection keeps its
user's shell open between commands from its second on (see ssh_session._Shell): no new server
session per command.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import cast

from opsconductor_connectors.errors import ConnectorError, Stage
from opsconductor_connectors.ssh import SshCredential, SshTarget, SshTimeouts, connect_ssh
from opsconductor_connectors.ssh_session import SshSession

Connector = Callable[[SshTarget, SshCredential], Awaitable[SshSession]]
HostKey = tuple[str, int]
PoolKey = tuple[str, int, str, str, str]


@dataclass(slots=True)
class PoolStats:
    created: int = 0  # new logins
    reused: int = 0  # checkouts served by an existing connection
    expired: int = 0  # closed after idling too long
    dead: int = 0  # found broken on checkout or release, and dropped
    evicted: int = 0  # idle, closed to make room for another user or credential version
    waited: int = 0  # checkouts that had to wait for the per-host cap
    failed: int = 0  # connection attempts that raised
    open: int = 0
    in_use: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(eq=False, slots=True)
class _Entry:
    key: PoolKey
    session: SshSession
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Host:
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    entries: list[_Entry] = field(default_factory=list)
    logins: dict[PoolKey, asyncio.Future[None]] = field(default_factory=dict)  # in progress


_NO_ENTRY = cast(_Entry, None)
_NO_LOGIN = cast("asyncio.Future[None]", None)


class SshPool:
    def __init__(
        self,
        *,
        max_per_host: int = 4,
        max_channels_per_connection: int = 8,
        idle_timeout_s: float = 60.0,
        ping_after_idle_s: float = 5.0,
        ping_timeout_s: float = 5.0,
        checkout_timeout_s: float = 120.0,
        timeouts: SshTimeouts | None = None,
        connector: Connector | None = None,
        reuse_shells: bool = True,
    ) -> None:
        if max_per_host < 1 or max_channels_per_connection < 1:
            raise ValueError("pool limits must be at least 1")
        self.max_per_host = max_per_host
        self.max_channels = max_channels_per_connection
        self.idle_timeout_s = idle_timeout_s
        self.ping_after_idle_s = ping_after_idle_s
        self.ping_timeout_s = ping_timeout_s
        self.checkout_timeout_s = checkout_timeout_s
        self.reuse_shells = reuse_shells
        self._timeouts = timeouts or SshTimeouts()
        self._connector = connector or self._connect
        self._hosts: dict[HostKey, _Host] = {}
        self._stats = PoolStats()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    async def _connect(self, target: SshTarget, credential: SshCredential) -> SshSession:
        return await connect_ssh(target, credential, timeouts=self._timeouts)

    @staticmethod
    def key_of(target: SshTarget, credential: SshCredential) -> PoolKey:
        pinned = target.host_key.fingerprint if target.host_key else ""
        return (target.host, target.port, credential.username, str(credential.version), pinned)

    def stats(self) -> PoolStats:
        entries = [entry for host in self._hosts.values() for entry in host.entries]
        self._stats.open = len(entries)
        self._stats.in_use = sum(1 for entry in entries if entry.in_use)
        return PoolStats(**asdict(self._stats))

    @contextlib.asynccontextmanager
    async def session(self, target: SshTarget, credential: SshCredential) -> AsyncIterator[SshSession]:
        """Check out a session for the duration of the block (its commands, uploads)."""
        entry = await self._acquire(target, credential)
        try:
            yield entry.session
        finally:
            await self._release((target.host, target.port), entry)

    async def _acquire(self, target: SshTarget, credential: SshCredential) -> _Entry:
        if self._closed:
            raise RuntimeError("the SSH pool is closed")
        self._start_reaper()
        key = self.key_of(target, credential)
        host = self._hosts.setdefault((target.host, target.port), _Host())
        deadline = time.monotonic() + self.checkout_timeout_s
        while True:
            action, entry, login = await self._reserve(host, key, deadline)
            if action == "login":
                return await self._open(host, key, login, target, credential)
            if action == "await":
                await asyncio.shield(login)  # someone else's login: share its outcome
                continue
            idle_for = time.monotonic() - entry.last_used
            if (
                entry.in_use > 1
                or idle_for < self.ping_after_idle_s
                or await entry.session.ping(self.ping_timeout_s)
            ):
                self._stats.reused += 1
                return entry
            async with host.cond:  # it died while idle: drop it and look again
                entry.in_use -= 1
                if entry in host.entries:
                    self._drop(host, entry)
                    self._stats.dead += 1
                host.cond.notify_all()

    async def _reserve(
        self, host: _Host, key: PoolKey, deadline: float
    ) -> tuple[str, _Entry, asyncio.Future[None]]:
        """("use", entry, _) an existing connection, ("login", _, login) to log in, or
        ("await", _, login) another checkout's login to this key."""
        async with host.cond:
            while True:
                self._expire(host)
                usable = [e for e in host.entries if e.key == key and e.in_use < self.max_channels]
                if usable:
                    entry = max(usable, key=lambda e: (e.in_use, e.last_used))  # pack, not spread
                    entry.in_use += 1
                    return "use", entry, _NO_LOGIN
                pending = host.logins.get(key)
                if pending is not None:
                    # One login per key at a time: a burst of checkouts must not become a burst
                    # of logins (sshd's MaxStartups), and a dead host fails them all at once.
                    return "await", _NO_ENTRY, pending
                if len(host.entries) + len(host.logins) < self.max_per_host:
                    login: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    login.add_done_callback(lambda f: f.cancelled() or f.exception())
                    host.logins[key] = login
                    return "login", _NO_ENTRY, login
                idle_other = [e for e in host.entries if e.in_use == 0 and e.key != key]
                if idle_other:
                    self._drop(host, min(idle_other, key=lambda e: e.last_used))
                    self._stats.evicted += 1
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectorError(
                        Stage.TIMEOUT,
                        f"all {self.max_per_host} connections to {key[0]} port {key[1]} stayed"
                        f" busy for {self.checkout_timeout_s:g}s",
                        during=Stage.CONNECT,
                    )
                self._stats.waited += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await host.cond.wait()

    async def _open(
        self,
        host: _Host,
        key: PoolKey,
        login: asyncio.Future[None],
        target: SshTarget,
        credential: SshCredential,
    ) -> _Entry:
        try:
            session = await self._connector(target, credential)
            session.reuse_shells = self.reuse_shells
        except BaseException as exc:
            async with host.cond:
                host.logins.pop(key, None)
                self._stats.failed += 1
                if not login.done():
                    if isinstance(exc, asyncio.CancelledError):
                        # Only this checkout was canceled: the others sharing the login retry.
                        login.set_result(None)
                    else:
                        login.set_exception(exc)
                host.cond.notify_all()
            raise
        entry = _Entry(key, session, in_use=1)
        async with host.cond:
            host.logins.pop(key, None)
            host.entries.append(entry)
            self._stats.created += 1
            login.set_result(None)
            host.cond.notify_all()
        return entry

    async def _release(self, host_key: HostKey, entry: _Entry) -> None:
        host = self._hosts.get(host_key)
        if host is None:  # the pool was closed meanwhile
            await entry.session.close()
            return
        async with host.cond:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.session.closed and entry in host.entries:
                self._drop(host, entry)
                self._stats.dead += 1
            host.cond.notify_all()

    def _drop(self, host: _Host, entry: _Entry) -> None:
        host.entries.remove(entry)
        task = asyncio.ensure_future(entry.session.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # best effort

    def _expire(self, host: _Host) -> None:
        now = time.monotonic()
        for entry in list(host.entries):
            if entry.in_use:
                continue
            if entry.session.closed:  # the server or the network ended it
                self._drop(host, entry)
                self._stats.dead += 1
            elif now - entry.last_used >= self.idle_timeout_s:
                self._drop(host, entry)
                self._stats.expired += 1

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        interval = min(max(self.idle_timeout_s / 2, 0.05), 30.0)
        while not self._closed:
            await asyncio.sleep(interval)
            for host in list(self._hosts.values()):
                async with host.cond:
                    self._expire(host)
                    host.cond.notify_all()

    async def close(self) -> None:
        """Close every connection, idle or in use; the pool cannot be used afterwards."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        hosts, self._hosts = self._hosts, {}
        sessions = [entry.session for host in hosts.values() for entry in host.entries]
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)

    async def __aenter__(self) -> SshPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
