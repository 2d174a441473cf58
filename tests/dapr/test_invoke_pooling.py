"""Service invocation through real sidecars keeps its connections to the caller's own sidecar.

The SDK's HTTP client opened a new session, so a new TCP connection, for every call: under load
each call paid a connect and a teardown in the app and in its sidecar, and left a TIME_WAIT socket
behind. These tests count this process's client connections to the sidecar's HTTP port in
/proc/net/tcp (no timing involved): calls, sequential or concurrent, share a bounded pool.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from opsconductor_runtime.dapr import DaprRuntime
from opsconductor_runtime.dapr.invocation import MAX_CONNECTIONS

from .conftest import MakeRun, gateway_calling_users_echo, received

pytestmark = pytest.mark.timeout(300)

_TIME_WAIT = "06"


def client_sockets(server_port: int) -> list[tuple[int, str]]:
    """(local port, TCP state) of every IPv4 socket on this host whose peer is 127.0.0.1:port.
    The sidecar's ports are free ports picked for this test: nothing else talks to them."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(remote.split(":")[1], 16) == server_port:
            found.append((int(local.split(":")[1], 16), state))
    return found


async def _invoke_all(runtime: DaprRuntime, calls: int, in_flight: int,
                      token: str) -> list[int]:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> int:
        async with gate:
            answer = await runtime.invoke("users", "GET", f"/users/me/{i}",
                                          headers={"Authorization": f"Bearer {token}"})
            seen = received(answer.body)
            assert seen["path"] == f"/users/me/{i}"
            assert seen["headers"]["authorization"] == f"Bearer {token}"
            return answer.status

    return await asyncio.gather(*(one(i) for i in range(calls)))


class TestConnectionsToTheSidecar:
    async def test_calls_reuse_pooled_connections(self, dapr_run: MakeRun) -> None:
        run = await dapr_run()
        async with gateway_calling_users_echo(run) as (runtime, gateway):
            port = gateway.ports.http
            # The runtime's first call waits for the sidecar (the SDK's readiness probes open
            # and close their own connections) and opens the pooled one: only sockets the
            # calls after it opened count.
            assert await _invoke_all(runtime, 1, 1, "tok-first") == [200]
            before = {local for local, _ in client_sockets(port)}
            sequential = await _invoke_all(runtime, 40, 1, "tok-seq")
            after_sequential = [s for s in client_sockets(port) if s[0] not in before]
            concurrent = await _invoke_all(runtime, 300, 60, "tok-conc")
            after_concurrent = [s for s in client_sockets(port) if s[0] not in before]

        assert sequential == [200] * 40
        assert concurrent == [200] * 300
        # One call at a time: the first call's kept-alive connection serves them all.
        assert after_sequential == [], after_sequential
        assert not [s for s in after_concurrent if s[1] == _TIME_WAIT], after_concurrent
        # Sixty in flight: at most one connection each, never one per call.
        assert len(after_concurrent) <= min(60, MAX_CONNECTIONS), len(after_concurrent)
