"""Connection checks of one target through opsconductor_connectors, with the address policy.

The name is resolved here first and every address is vetted (hosts.resolve_allowed); SSH then
connects to the vetted address itself, so a second lookup cannot swap in a forbidden one. A
target without a pinned key is only probed: the presented key is reported, nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from opsconductor_connectors import (
    ConnectionCheck,
    ConnectorError,
    HostKeyPin,
    SshCredential,
    SshTarget,
    SshTimeouts,
    Stage,
    StageTiming,
    WinrmCredential,
    WinrmTarget,
    WinrmTimeouts,
    check_ssh_connection,
    check_winrm_connection,
    probe_host_key,
)
from opsconductor_targets.crypto import CredentialSecret
from opsconductor_targets.hosts import HostRefused, resolve_allowed
from opsconductor_targets.models import DEGRADED, HEALTHY, UNREACHABLE


@dataclass(frozen=True, repr=False)
class CheckTarget:
    """A target as a check needs it, secret included; built in a short transaction."""

    id: uuid.UUID
    name: str
    host: str
    port: int
    protocol: str
    username: str
    secret: CredentialSecret | None
    credential_version: int
    host_key_fingerprint: str | None
    host_key: str | None
    winrm_transport: str | None
    winrm_scheme: str | None
    winrm_verify_tls: bool | None

    def __repr__(self) -> str:
        return f"CheckTarget(id={self.id}, name={self.name!r})"


@dataclass(frozen=True)
class CheckOutcome:
    check: ConnectionCheck
    # The key a server presented when it was not the pinned one (for an operator to approve).
    presented_fingerprint: str | None = None
    presented_key: str | None = None


@dataclass(frozen=True)
class CheckLimits:
    resolve_s: float = 5.0
    connect_s: float = 10.0
    auth_s: float = 15.0
    command_s: float = 10.0

    @property
    def ssh(self) -> SshTimeouts:
        return SshTimeouts(resolve_s=self.resolve_s, connect_s=self.connect_s,
                           host_key_s=self.connect_s, auth_s=self.auth_s)

    @property
    def winrm(self) -> WinrmTimeouts:
        return WinrmTimeouts(resolve_s=self.resolve_s, auth_s=self.auth_s,
                             operation_s=max(1, int(self.command_s)))


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


def _failed(stage: Stage, message: str, latency_ms: float, timings: list[StageTiming],
            fingerprint: str | None = None) -> ConnectionCheck:
    return ConnectionCheck(ok=False, stage=stage, latency_ms=latency_ms, message=message,
                           host_key_fingerprint=fingerprint,
                           stages=(*timings, StageTiming(stage, False, 0.0)))


def _with_resolve(check: ConnectionCheck, resolve_ms: float) -> ConnectionCheck:
    """Our own (vetted) resolution replaces the connector's, which only saw an address."""
    stages = [s for s in check.stages if s.stage is not Stage.RESOLVE]
    return dataclasses.replace(check, latency_ms=check.latency_ms + resolve_ms,
                               stages=(StageTiming(Stage.RESOLVE, True, resolve_ms), *stages))


def unusable_credential(message: str) -> CheckOutcome:
    """The stored secret cannot be opened: nothing was tried, and the operator must know."""
    return CheckOutcome(_failed(Stage.AUTH, message, 0.0, []))


def status_for(check: ConnectionCheck, degraded_latency_ms: float) -> str:
    if check.ok:
        return DEGRADED if check.latency_ms > degraded_latency_ms else HEALTHY
    return UNREACHABLE if check.stage in (Stage.RESOLVE, Stage.CONNECT) else DEGRADED


async def run_check(target: CheckTarget, *, allow_loopback: bool, limits: CheckLimits) -> CheckOutcome:
    started = time.monotonic()
    try:
        addresses = await resolve_allowed(target.host, target.port, allow_loopback=allow_loopback,
                                          timeout_s=limits.resolve_s)
    except HostRefused as exc:
        return CheckOutcome(_failed(Stage.RESOLVE, f"refused: {exc}", _ms(started), []))
    except TimeoutError:
        return CheckOutcome(_failed(Stage.RESOLVE, f"timed out resolving {target.host}",
                                    _ms(started), []))
    except (OSError, UnicodeError):
        return CheckOutcome(_failed(Stage.RESOLVE, f"cannot resolve host {target.host!r}",
                                    _ms(started), []))
    resolve_ms = _ms(started)
    if target.protocol == "winrm":
        return await _winrm(target, addresses[0], resolve_ms, limits)
    for address in addresses:
        outcome = await _ssh(target, address, resolve_ms, limits)
        # Like ssh(1): the next address only when this one did not answer at all.
        if outcome.check.ok or outcome.check.stage is not Stage.CONNECT:
            break
    return outcome


async def _ssh(target: CheckTarget, address: str, resolve_ms: float,
               limits: CheckLimits) -> CheckOutcome:
    resolved = StageTiming(Stage.RESOLVE, True, resolve_ms)
    pin = (HostKeyPin(target.host_key_fingerprint, target.host_key)
           if target.host_key_fingerprint else None)
    if pin is None or target.secret is None:
        started = time.monotonic()
        try:
            probe = await probe_host_key(address, target.port, timeouts=limits.ssh)
        except ConnectorError as exc:
            return CheckOutcome(_failed(exc.reported_stage, exc.message,
                                        resolve_ms + _ms(started), [resolved]))
        latency = resolve_ms + _ms(started)
        if pin is None:
            message = (f"unknown host key ({probe.algorithm}): approve and pin "
                       f"{probe.fingerprint} to connect; no credential was sent")
            return CheckOutcome(_failed(Stage.HOST_KEY, message, latency, [resolved],
                                        probe.fingerprint), probe.fingerprint, probe.public_key)
        if probe.fingerprint != pin.fingerprint:
            message = (f"host key changed: the server presented {probe.fingerprint} but "
                       f"{pin.fingerprint} is pinned; refusing to connect")
            return CheckOutcome(_failed(Stage.HOST_KEY, message, latency, [resolved],
                                        probe.fingerprint), probe.fingerprint, probe.public_key)
        key_ok = StageTiming(Stage.HOST_KEY, True, probe.latency_ms)
        return CheckOutcome(_failed(Stage.AUTH, "no credential is set for this target",
                                    latency, [resolved, key_ok], pin.fingerprint))
    secret = target.secret
    credential = SshCredential(target.username, password=secret.password,
                               private_key=secret.private_key, passphrase=secret.passphrase,
                               version=target.credential_version)
    check = await check_ssh_connection(SshTarget(address, target.port, pin), credential,
                                       timeouts=limits.ssh, command_timeout_s=limits.command_s)
    check = _with_resolve(check, resolve_ms)
    if not check.ok and check.stage is Stage.HOST_KEY and check.host_key_fingerprint \
            and check.host_key_fingerprint != pin.fingerprint:
        return CheckOutcome(check, check.host_key_fingerprint)
    return CheckOutcome(check)


async def _reachable_only(target: CheckTarget, address: str, resolve_ms: float,
                          limits: CheckLimits) -> CheckOutcome:
    """No credential: say whether the port answers, and that nothing more could be tried."""
    resolved = StageTiming(Stage.RESOLVE, True, resolve_ms)
    started = time.monotonic()
    try:
        async with asyncio.timeout(limits.connect_s):
            _reader, writer = await asyncio.open_connection(address, target.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        return CheckOutcome(_failed(Stage.CONNECT, f"cannot connect to {target.host} port "
                                    f"{target.port}", resolve_ms + _ms(started), [resolved]))
    connected = StageTiming(Stage.CONNECT, True, _ms(started))
    return CheckOutcome(_failed(Stage.AUTH, "no credential is set for this target",
                                resolve_ms + _ms(started), [resolved, connected]))


async def _winrm(target: CheckTarget, address: str, resolve_ms: float,
                 limits: CheckLimits) -> CheckOutcome:
    scheme: Literal["https", "http"] = "http" if target.winrm_scheme == "http" else "https"
    auth: Literal["ntlm", "basic"] = "basic" if target.winrm_transport == "basic" else "ntlm"
    verify = target.winrm_verify_tls is not False
    # The certificate check needs the name; without one, use the vetted address (no re-lookup).
    host = target.host if (scheme == "https" and verify) else address
    endpoint = WinrmTarget(host, target.port, scheme=scheme, verify_tls=verify)
    if target.secret is None or not target.secret.password:
        return await _reachable_only(target, address, resolve_ms, limits)
    credential = WinrmCredential(target.username, target.secret.password,
                                 auth=auth,
                                 version=target.credential_version)
    try:
        check = await check_winrm_connection(endpoint, credential, timeouts=limits.winrm,
                                             command_timeout_s=limits.command_s)
    except ConnectorError as exc:  # refused before any exchange (e.g. Basic over plain HTTP)
        return CheckOutcome(_failed(exc.reported_stage, exc.message, resolve_ms, []))
    return CheckOutcome(_with_resolve(check, resolve_ms))
