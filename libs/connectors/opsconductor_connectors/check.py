"""Connection tests: every stage timed, the first failing one named (POST /targets/{id}/test).

An SSH target without a pinned host key is only probed: the answer carries the presented
fingerprint for an operator to approve, and no credential is sent.
"""

from __future__ import annotations

import time

from opsconductor_connectors._net import connect_tcp, elapsed_ms, resolve
from opsconductor_connectors.errors import ConnectorError, Stage
from opsconductor_connectors.results import ConnectionCheck, StageTiming
from opsconductor_connectors.ssh import (
    SshCredential,
    SshTarget,
    SshTimeouts,
    connect_ssh,
    probe_host_key,
)
from opsconductor_connectors.winrm import WinrmClient, WinrmCredential, WinrmTarget, WinrmTimeouts

ORDER = (Stage.RESOLVE, Stage.CONNECT, Stage.HOST_KEY, Stage.AUTH, Stage.COMMAND)
SSH_OS_COMMAND = "uname -srm"
WINRM_OS_COMMAND = "ver"
OS_INFO_MAX = 200


def _stages(
    timings: dict[str, float], total_ms: float, failed: Stage | None = None
) -> tuple[StageTiming, ...]:
    out: list[StageTiming] = []
    for stage in ORDER:
        if stage is failed:
            spent = timings.get(stage.value, max(total_ms - sum(t.latency_ms for t in out), 0.0))
            out.append(StageTiming(stage, False, spent))
            break
        if stage.value in timings:
            out.append(StageTiming(stage, True, timings[stage.value]))
    return tuple(out)


def _failure(exc: ConnectorError, started: float, fingerprint: str | None = None) -> ConnectionCheck:
    total = elapsed_ms(started)
    stage = exc.reported_stage
    if stage is Stage.TIMEOUT:  # pragma: no cover - a timeout always names its stage
        stage = Stage.CONNECT
    return ConnectionCheck(
        ok=False,
        stage=stage,
        latency_ms=total,
        message=exc.message,
        host_key_fingerprint=exc.host_key_fingerprint or fingerprint,
        stages=_stages(exc.timings, total, stage),
    )


def _os_info(stdout: str, exit_code: int | None) -> str | None:
    text = " ".join(stdout.split())
    return text[:OS_INFO_MAX] if exit_code == 0 and text else None


async def check_ssh_connection(
    target: SshTarget,
    credential: SshCredential,
    *,
    timeouts: SshTimeouts | None = None,
    os_command: str = SSH_OS_COMMAND,
    command_timeout_s: float = 10.0,
) -> ConnectionCheck:
    timeouts = timeouts or SshTimeouts()
    started = time.monotonic()
    if target.host_key is None:
        try:
            probe = await probe_host_key(target.host, target.port, timeouts=timeouts)
        except ConnectorError as exc:
            return _failure(exc, started)
        total = elapsed_ms(started)
        return ConnectionCheck(
            ok=False,
            stage=Stage.HOST_KEY,
            latency_ms=total,
            message=(
                f"unknown host key ({probe.algorithm}): approve and pin {probe.fingerprint}"
                " to connect; no credential was sent"
            ),
            host_key_fingerprint=probe.fingerprint,
            stages=_stages({}, total, Stage.HOST_KEY),
        )
    try:
        session = await connect_ssh(target, credential, timeouts=timeouts, keepalive_s=0)
    except ConnectorError as exc:
        return _failure(exc, started)
    timings = dict(session.timings)
    try:
        result = await session.run(os_command, timeout_s=command_timeout_s, grace_s=0.5)
    except ConnectorError as exc:
        exc.timings = timings
        return _failure(exc, started, session.host_key_fingerprint)
    finally:
        await session.close()
    timings["command"] = result.timings.get("command", result.duration_ms)
    total = elapsed_ms(started)
    return ConnectionCheck(
        ok=True,
        stage=Stage.COMMAND,
        latency_ms=total,
        message=f"connected as {credential.username} and ran a command",
        host_key_fingerprint=session.host_key_fingerprint,
        os_info=_os_info(result.stdout, result.exit_code),
        stages=_stages(timings, total),
    )


async def check_winrm_connection(
    target: WinrmTarget,
    credential: WinrmCredential,
    *,
    timeouts: WinrmTimeouts | None = None,
    os_command: str = WINRM_OS_COMMAND,
    command_timeout_s: float = 20.0,
) -> ConnectionCheck:
    timeouts = timeouts or WinrmTimeouts()
    started = time.monotonic()
    timings: dict[str, float] = {}
    try:
        client = WinrmClient(target, credential, timeouts=timeouts)
        mark = time.monotonic()
        addresses = await resolve(target.host, target.port, timeouts.resolve_s)
        timings["resolve"] = elapsed_ms(mark)
        mark = time.monotonic()
        # A TCP connect of its own: pywinrm does not separate connecting from the request.
        sock = await connect_tcp(addresses, target.host, target.port, min(timeouts.auth_s, 10.0))
        sock.close()
        timings["connect"] = elapsed_ms(mark)
        running = await client.start(os_command, stream=False)
        timings["auth"] = running.timings.get("auth", 0.0)
        result = await running.wait(command_timeout_s, grace_s=0.5)
        timings["command"] = result.timings.get("command", result.duration_ms)
    except ConnectorError as exc:
        exc.timings = {**timings, **exc.timings}
        return _failure(exc, started)
    total = elapsed_ms(started)
    return ConnectionCheck(
        ok=True,
        stage=Stage.COMMAND,
        latency_ms=total,
        message=f"connected as {credential.username} and ran a command",
        os_info=_os_info(result.stdout, result.exit_code),
        stages=_stages(timings, total),
    )
