"""Dapr mode's processes under pressure, with real daprd and Sentry: a port taken between being
picked and being bound, a public port in use, and apps or sidecars that die while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from opsconductor_platform.dapr_mode import APP_KEEP_ALIVE_S, SidecarPorts, StartupFailed
from opsconductor_platform.hosting import HOSTED_APPS
from opsconductor_platform.processes import RestartPolicy
from opsconductor_testing.dapr import require_dapr
from opsconductor_testing.platform import ADMIN_PASSWORD

from .conftest import MakeRun

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on, for as long as the block lasts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        yield int(thief.getsockname()[1])


async def eventually(check: Callable[[], object], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.2)
    return False


async def healthz(port: int) -> int:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code
    except httpx.HTTPError:
        return 0


class TestPortRace:
    async def test_a_sidecar_whose_port_was_taken_comes_up_on_fresh_ports(
            self, dapr_run: MakeRun, caplog: pytest.LogCaptureFixture) -> None:
        run = await dapr_run()
        with taken_port() as taken, caplog.at_level(logging.WARNING, "opsconductor.platform"):
            sidecar = await run.start_sidecar("users", ports=SidecarPorts(app=0, http=taken))
            await run.wait_healthy(sidecar)
            assert sidecar.ports.http != taken
            async with httpx.AsyncClient(timeout=5.0) as client:
                answer = await client.get(
                    f"http://127.0.0.1:{sidecar.ports.http}/v1.0/metadata",
                    headers={"dapr-api-token": sidecar.dapr_token})
            assert answer.status_code == 200 and answer.json()["id"] == "users"
        retries = [r for r in caplog.records if r.getMessage().startswith("sidecar exited")]
        assert len(retries) == 1, [r.getMessage() for r in caplog.records]
        # daprd says which server could not listen (the port number is in its debug log only).
        assert "could not listen" in retries[0].__dict__["reason"]

    async def test_a_sidecar_waits_while_another_holds_the_name_registry(
            self, dapr_run: MakeRun) -> None:
        # Every sidecar checks the registry's migrations as it starts, in a write transaction;
        # when they all start together, one holds it while the others wait their turn. One that
        # gave up stayed up, unregistered: no other sidecar could call its app.
        run = await dapr_run()  # its first sidecar has made the registry
        assert run.files is not None
        registry = sqlite3.connect(run.files.name_resolution_db, isolation_level=None)
        try:
            registry.execute("BEGIN EXCLUSIVE")
            release = asyncio.get_running_loop().call_later(2.0, registry.execute, "ROLLBACK")
            sidecar = await run.start_sidecar("users")
            await run.wait_healthy(sidecar)
            release.cancel()
            registered = False
            deadline = time.monotonic() + 10
            while not registered and time.monotonic() < deadline:
                registered = registry.execute(
                    "SELECT count(*) FROM hosts WHERE app_id = 'users'").fetchone()[0] > 0
                await asyncio.sleep(0.2)
        finally:
            registry.close()
        assert registered, sidecar.child.last_error

    async def test_sentry_whose_port_was_taken_starts_on_another(self,
                                                                 dapr_run: MakeRun) -> None:
        run = await dapr_run(prepare=False)
        with taken_port() as taken:
            run.sentry_port = taken
            # prepare() also starts a first sidecar, which needs its certificate from Sentry.
            await run.prepare()
        assert run.sentry_port != taken

    async def test_a_port_that_stays_taken_ends_with_a_clear_error(self,
                                                                    dapr_run: MakeRun) -> None:
        with taken_port() as taken:
            run = await dapr_run(prepare=False, sentry_port=taken, start_attempts=2)
            started = time.monotonic()
            with pytest.raises(StartupFailed, match="address already in use") as failure:
                await run.prepare()
        assert "2 attempts" in str(failure.value)
        assert time.monotonic() - started < 60

    async def test_a_sidecar_that_never_starts_ends_with_a_clear_error(
            self, dapr_run: MakeRun, tmp_path: Path) -> None:
        run = await dapr_run(start_attempts=3)
        broken = tmp_path / "daprd"
        broken.write_text('#!/bin/sh\necho \'{"level":"fatal","msg":"no such component"}\'\n'
                          "exit 1\n")
        broken.chmod(0o755)
        run.daprd = broken
        sidecar = await run.start_sidecar("users")
        with pytest.raises(StartupFailed) as failure:
            await run.wait_healthy(sidecar)
        assert str(failure.value) == ("users sidecar could not start (3 attempts); the last one "
                                      "ended with exit code 1: no such component")

    def test_a_public_port_in_use_stops_the_start_at_once(self, tmp_path: Path) -> None:
        env = {**os.environ, **require_dapr(), "OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD}
        with taken_port() as taken:
            result = subprocess.run(
                [sys.executable, "-m", "opsconductor_platform", "up", "--runtime", "dapr",
                 "--port", str(taken), "--data-dir", str(tmp_path / "data")],
                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stderr
        assert f"cannot listen on 127.0.0.1:{taken}" in result.stderr
        assert "--port" in result.stderr


class TestSupervision:
    async def test_a_dead_app_or_sidecar_is_started_again(
            self, dapr_run: MakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
        run = await dapr_run(restarts=RestartPolicy(limit=3, window_s=120, delay_s=0.2))
        monkeypatch.setenv("OPSC_DATA_DIR", str(run.options.data_dir))
        monkeypatch.setenv("OPSC_ADMIN_PASSWORD", ADMIN_PASSWORD)
        users = await run.start_app(next(a for a in HOSTED_APPS if a.app_id == "users"))
        stop = asyncio.Event()
        watching = asyncio.create_task(run.watch(stop))
        try:
            # kill -9 of the app: a new process serves on the same port.
            first = users.child
            assert first is not None
            first.process.send_signal(signal.SIGKILL)
            assert await eventually(lambda: users.child is not first)
            assert await eventually(lambda: healthz(users.port), 60)

            # The sidecar: first on its own ports again (the app keeps running) ...
            app_process, ports = users.child, users.sidecar.ports
            dead = users.sidecar.child
            dead.process.send_signal(signal.SIGKILL)
            assert await eventually(lambda: users.sidecar.child is not dead)
            await run.wait_healthy(users.sidecar, users.port)
            assert users.sidecar.ports == ports and users.child is app_process
            # ... and when that did not last, on fresh ones, with its app told so.
            restarted = users.sidecar.child
            restarted.process.send_signal(signal.SIGKILL)
            assert await eventually(lambda: users.sidecar.child is not restarted)
            await run.wait_healthy(users.sidecar, users.port)
            assert users.sidecar.ports.http != ports.http and users.child is not app_process
            assert not watching.done()
        finally:
            stop.set()
        assert await watching == 0


def ask_healthz(connection: http.client.HTTPConnection) -> int:
    """One request on a kept-alive connection, its answer read whole (headers and body may
    arrive in separate segments); raises if the app has closed the connection."""
    connection.request("GET", "/healthz")
    answer = connection.getresponse()
    answer.read()
    return answer.status


class TestIdleConnections:
    async def test_an_app_keeps_an_idle_connection_longer_than_uvicorns_default(
            self, dapr_run: MakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
        """The sidecar pools its connections to the app for 90 s; an app that closed one
        sooner (uvicorn's default: 5 s) raced the sidecar's next call on it."""
        run = await dapr_run()
        monkeypatch.setenv("OPSC_DATA_DIR", str(run.options.data_dir))
        users = await run.start_app(next(a for a in HOSTED_APPS if a.app_id == "users"))
        assert APP_KEEP_ALIVE_S > 90
        connection = http.client.HTTPConnection("127.0.0.1", users.port, timeout=10)
        try:
            assert ask_healthz(connection) == 200
            first_socket = connection.sock
            await asyncio.sleep(6.5)
            try:
                status = ask_healthz(connection)
            except (http.client.RemoteDisconnected, ConnectionError) as closed:
                pytest.fail(f"the app closed the connection: {closed!r}")
            assert status == 200
            # http.client reconnects quietly only after a closed socket: same socket or bust.
            assert connection.sock is first_socket, "the app closed the connection"
        finally:
            connection.close()
