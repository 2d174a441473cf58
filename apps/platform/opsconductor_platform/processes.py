"""Child processes of Dapr mode: started tied to this process's life, stopped politely, and
restarted with backoff when one ends on its own (as Kubernetes restarts a pod's container).

A sidecar's or Sentry's output can pass through this process (`capture=True`): each line goes on
to stdout unchanged, and the last error it printed is kept, so a process that ends says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("opsconductor.platform.dapr")

_PR_SET_PDEATHSIG = 1
_REASON_MAX = 300


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Runs in the child before exec: the kernel kills it if this process dies (even by
    SIGKILL), so a crashed platform never leaves sidecars holding its ports."""

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return setup


@dataclass(eq=False)
class Child:
    name: str
    process: asyncio.subprocess.Process
    ended: asyncio.Future[int]
    last_error: str | None = None
    _relay: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def reason(self) -> str:
        """How it ended, in words: its exit code or signal, and the last error it printed."""
        code = self.process.returncode
        if code is None:
            text = "still running"
        elif code < 0:
            try:
                text = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                text = f"killed by signal {-code}"
        else:
            text = f"exit code {code}"
        return f"{text}: {self.last_error}" if self.last_error else text


async def spawn(name: str, argv: list[str], env: dict[str, str], *,
                pass_fds: Collection[int] = (), capture: bool = False) -> Child:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if capture else None,
        stderr=asyncio.subprocess.STDOUT if capture else None,
        pass_fds=tuple(pass_fds), start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()))
    child = Child(name, process, asyncio.ensure_future(process.wait()))
    if capture:
        child._relay = asyncio.create_task(_relay_output(child), name=f"output of {name}")
    return child


def _error_in(line: bytes) -> str | None:
    """The message of an error or fatal JSON log line (Dapr's --log-as-json format)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("level") not in ("error", "fatal"):
        return None
    message = str(record.get("msg") or "").strip()
    return message[:_REASON_MAX] or None


async def _relay_output(child: Child) -> None:
    stream = child.process.stdout
    assert stream is not None
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line beyond the stream limit: pass the rest through in pieces
            line = await stream.read(65536)
        if not line:
            return
        with contextlib.suppress(OSError, ValueError):
            out = getattr(sys.stdout, "buffer", None)
            if out is not None:
                out.write(line)
            else:
                sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()
        error = _error_in(line)
        if error:
            child.last_error = error


async def terminate(children: list[Child], timeout_s: float) -> None:
    running = [c for c in children if c.running]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    if running:
        await asyncio.wait([c.ended for c in running], timeout=timeout_s)
    for child in running:
        if child.running:
            log.warning("process did not stop in time; killing it",
                        extra={"process_name": child.name})
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.ended
    # Its last lines are on their way to stdout.
    relays = [c._relay for c in children if c._relay is not None]
    if relays:
        await asyncio.wait(relays, timeout=2.0)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free one). The platform keeps it and hands it to each
    process of an app: a restarted app serves on the same port, which nobody can take meanwhile."""
    # IPv4 unless the address is IPv6, as uvicorn's own --host does ("localhost": 127.0.0.1).
    wanted = socket.AF_INET6 if ":" in host else socket.AF_INET
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, wanted, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # uvicorn wraps an inherited --fd as AF_UNIX, so asyncio never sets TCP_NODELAY on the
        # connections it accepts; small answers then waited for delayed ACKs (~40 ms a request).
        # Accepted sockets inherit the option from the listener.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff `delay_s` doubling up to `delay_max_s`; more than `limit` restarts of one process
    within `window_s` means it cannot run, and the platform stops."""

    limit: int = 5
    window_s: float = 120.0
    delay_s: float = 0.5
    delay_max_s: float = 10.0

    def delay(self, earlier: int) -> float:
        return float(min(self.delay_s * 2 ** earlier, self.delay_max_s))


Restart = Callable[[Child, int, float], Coroutine[Any, Any, None]]


async def supervise(stop: asyncio.Event, live: Callable[[], list[Child]], restart: Restart,
                    policy: RestartPolicy) -> int:
    """Until `stop` is set (0), restarting every process of `live()` that ends: `restart(child,
    n, delay_s)` waits `delay_s` and starts its n-th replacement within the window. Returns 1
    once one ended more often than the policy allows or could not be restarted. A process
    dropped from `live()` meanwhile (stopped on purpose) is not restarted."""
    loop = asyncio.get_running_loop()
    history: defaultdict[str, deque[float]] = defaultdict(deque)
    restarting: dict[asyncio.Task[None], str] = {}
    handled: set[Child] = set()
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while True:
            watched = {child.ended: child for child in live() if child not in handled}
            waiting: list[asyncio.Future[Any]] = [stopper, *watched, *restarting]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                return 0
            for task in [t for t in restarting if t in done]:
                name = restarting.pop(task)
                error = task.exception()
                if error is not None:
                    print(f"OpsConductor: could not restart {name}: {error}; stopping "
                          "everything.", file=sys.stderr, flush=True)
                    return 1
            current = live()
            for future in done:
                child = watched.get(future)
                if child is None or child not in current:
                    continue
                handled.add(child)
                times = history[child.name]
                now = loop.time()
                while times and now - times[0] > policy.window_s:
                    times.popleft()
                if len(times) >= policy.limit:
                    print(f"OpsConductor: {child.name} stopped unexpectedly ({child.reason()}), "
                          f"{len(times) + 1} times within {policy.window_s:g}s; stopping "
                          "everything.", file=sys.stderr, flush=True)
                    return 1
                delay = policy.delay(len(times))
                times.append(now)
                log.warning("process stopped unexpectedly; restarting it", extra={
                    "process_name": child.name, "reason": child.reason(), "delay_s": delay,
                    "restart": len(times), "restart_limit": policy.limit,
                    "window_s": policy.window_s})
                task = asyncio.create_task(restart(child, len(times), delay),
                                           name=f"restart {child.name}")
                restarting[task] = child.name
    finally:
        stopper.cancel()
        for task in restarting:
            task.cancel()
        if restarting:
            await asyncio.wait(restarting)
