"""Dapr mode's process handling with real (tiny) processes: supervision with backoff and a
restart limit, why a process ended, and listening sockets handed to a child and back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest

from opsconductor_platform.processes import (
    Child,
    RestartPolicy,
    listen,
    spawn,
    supervise,
    terminate,
)

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
FAST = RestartPolicy(limit=5, window_s=60, delay_s=0.05, delay_max_s=0.2)


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


class Fleet:
    """The processes a supervisor watches, and a record of each restart it asked for."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.restarts: list[tuple[str, int, float]] = []
        self.argv: dict[str, list[str]] = {}

    async def add(self, name: str, argv: list[str]) -> Child:
        self.argv[name] = argv
        child = await spawn(name, argv, ENV)
        self.children.append(child)
        return child

    async def restart(self, child: Child, restart: int, delay_s: float) -> None:
        self.restarts.append((child.reason(), restart, delay_s))
        await asyncio.sleep(delay_s)
        self.children.remove(child)
        self.children.append(await spawn(child.name, self.argv[child.name], ENV))

    def supervise(self, stop: asyncio.Event, policy: RestartPolicy = FAST) -> asyncio.Task[int]:
        return asyncio.create_task(supervise(stop, lambda: self.children, self.restart, policy))


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    crew = Fleet()
    yield crew
    await terminate(crew.children, timeout_s=5)


class TestSupervise:
    async def test_a_process_that_ends_is_started_again_after_a_growing_delay(
            self, fleet: Fleet) -> None:
        worker = await fleet.add("worker", ["sh", "-c", "exit 3"])
        stop = asyncio.Event()
        watching = fleet.supervise(stop)
        assert await eventually(lambda: len(fleet.restarts) >= 3)
        # The third replacement lives: it sleeps instead.
        fleet.argv["worker"] = ["sleep", "30"]
        assert await eventually(lambda: any(c.running for c in fleet.children), 5)
        assert worker not in fleet.children
        stop.set()
        assert await watching == 0
        reasons, numbers, delays = zip(*fleet.restarts[:3], strict=True)
        assert set(reasons) == {"exit code 3"}
        assert numbers == (1, 2, 3)
        assert delays == (0.05, 0.1, 0.2)

    async def test_one_that_keeps_ending_stops_the_platform(
            self, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
        await fleet.add("crasher", ["sh", "-c", "exit 7"])
        await fleet.add("steady", ["sleep", "30"])
        stop = asyncio.Event()
        code = await asyncio.wait_for(
            fleet.supervise(stop, RestartPolicy(limit=2, window_s=60, delay_s=0.01)), 10)
        assert code == 1
        assert len(fleet.restarts) == 2
        message = capsys.readouterr().err
        assert "crasher stopped unexpectedly (exit code 7), 3 times within 60s" in message
        assert "steady" not in message

    async def test_restarts_outside_the_window_are_forgotten(self, fleet: Fleet) -> None:
        await fleet.add("flaky", ["sh", "-c", "sleep 0.1; exit 1"])
        stop = asyncio.Event()
        watching = fleet.supervise(stop, RestartPolicy(limit=1, window_s=0.05, delay_s=0.01))
        assert await eventually(lambda: len(fleet.restarts) >= 3)
        stop.set()
        assert await watching == 0
        assert {(number, delay) for _, number, delay in fleet.restarts} == {(1, 0.01)}

    async def test_a_process_stopped_on_purpose_is_left_alone(self, fleet: Fleet) -> None:
        retired = await fleet.add("retired", ["sleep", "30"])
        stop = asyncio.Event()
        watching = fleet.supervise(stop)
        await asyncio.sleep(0.1)
        fleet.children.remove(retired)
        await terminate([retired], timeout_s=5)
        await asyncio.sleep(0.3)
        stop.set()
        assert await watching == 0
        assert fleet.restarts == []

    async def test_stop_during_a_backoff_restarts_nothing(self, fleet: Fleet) -> None:
        await fleet.add("slow-to-return", ["sh", "-c", "exit 1"])
        stop = asyncio.Event()
        watching = fleet.supervise(stop, RestartPolicy(delay_s=30, delay_max_s=30))
        assert await eventually(lambda: len(fleet.restarts) == 1)
        stop.set()
        assert await asyncio.wait_for(watching, 5) == 0
        assert not any(c.running for c in fleet.children)


class TestReason:
    async def test_the_last_error_a_sidecar_printed_says_why_it_ended(self) -> None:
        lines = [{"level": "info", "msg": "starting"},
                 {"level": "fatal", "msg": "failed to start HTTP server: address already in use"},
                 {"level": "info", "msg": "shutting down"}]
        script = "".join(f"echo '{json.dumps(line)}'; " for line in lines) + "exit 1"
        child = await spawn("daprd", ["sh", "-c", script], ENV, capture=True)
        await child.ended
        await terminate([child], timeout_s=5)
        assert child.reason() == "exit code 1: failed to start HTTP server: address already in use"

    async def test_a_killed_process_names_the_signal(self) -> None:
        child = await spawn("app", ["sleep", "30"], ENV)
        child.process.send_signal(signal.SIGKILL)
        await child.ended
        assert child.reason() == "killed by SIGKILL"


SERVE_ONCE = ("import socket, sys\n"
              "listener = socket.socket(fileno=int(sys.argv[1]))\n"
              "connection, _ = listener.accept()\n"
              "connection.sendall(sys.argv[2].encode())\n"
              "connection.close()\n")


def fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(100)


class TestListen:
    async def test_the_port_outlives_the_process_serving_it(self) -> None:
        listener = listen("127.0.0.1", 0)
        port = listener.getsockname()[1]
        try:
            for life in ("first", "second"):
                child = await spawn("app", [sys.executable, "-c", SERVE_ONCE,
                                            str(listener.fileno()), life],
                                    ENV, pass_fds=(listener.fileno(),))
                assert await asyncio.to_thread(fetch, port) == life.encode()
                await child.ended
                # Between two lives of the app, nobody else can take its port.
                with pytest.raises(OSError):
                    listen("127.0.0.1", port).close()
        finally:
            listener.close()

    def test_a_port_in_use_is_refused(self) -> None:
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            with pytest.raises(OSError):
                listen("127.0.0.1", other.getsockname()[1])

    def test_connections_it_accepts_send_small_answers_at_once(self) -> None:
        # uvicorn treats a handed-over socket as AF_UNIX and leaves Nagle on; with it, every
        # small answer waited ~40 ms for the client's delayed ACK.
        listener = listen("127.0.0.1", 0)
        try:
            with socket.create_connection(listener.getsockname()):
                accepted, _ = listener.accept()
                with accepted:
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            listener.close()
