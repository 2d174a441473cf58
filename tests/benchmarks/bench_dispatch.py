"""Benchmark: dispatch latency and sustained run rate of a one-target job (`echo hi`), through the
gateway of a real `opsconductor up`, on a loopback OpenSSH target (issue 5, "Dispatch").
A measurement, not a test: nothing is asserted, and pytest does not collect this file.

    uv run python tests/benchmarks/bench_dispatch.py [--runs 200] [--concurrency 5,10,20]
        [--duration 30] [--shells fast,slow] [--modes embedded,dapr]

Dapr mode (`--modes dapr`, labelled `dapr-rabbitmq`) needs `eval "$(scripts/dapr-tier.sh)"` first.

Dispatch: `POST /api/v1/jobs/{id}/run`, then, as soon as it returns, `GET
/api/v1/executions/{id}/events` (SSE). Timed from the start of the POST: the POST itself, the SSE
answer's headers, the first `output` message and `finished`. The runs are one at a time.

Shells: the target is root on a test sshd (libs/testing SshServer). Root's login shell here is
bash, which sources ~/.bashrc (`pyenv init`: hundreds of ms of CPU) for every command sshd runs,
unless SHLVL says it is not the first shell; `fast` runs the test sshd as it is (`SetEnv SHLVL=1`),
`slow` with the login profile. The same job runs against each, so the difference is the remote
shell alone. The floor row runs `echo hi` on an already open asyncssh connection from this
process: the SSH part alone.

Where the time goes: afterwards the stored timestamps of every run are read through the public
API (execution created_at / started_at, the target's started_at, the first output chunk's ts,
which is when the executor read it from SSH) and set against this process's clock (same host).

Sustained: `--concurrency` runs in flight (closed loop: each worker starts its next run when it
saw `finished` of the last) for `--duration` seconds after a short warm-up; completed runs/s and
the dispatch latency at that load. The edge rate limits (per address and per user) are turned
off for the platform under test: at their defaults one user gets 20 requests/s, which a load of
runs (each a POST and an SSE request) would hit first.

CPU during each phase: the platform's process tree, the sshd tree, this client, and the rest of
the machine ("other", from /proc/stat) -- the machine is shared, so read numbers with the load.
Traced (`--trace-runs N`): one more embedded platform, started through this file with timing
wrappers around transactions, in-process calls, the embedded broker's store, the executor's hooks
and SQLAlchemy session calls (product code untouched): a timeline of one run and the work per run.

Markdown tables on stdout; JSON in .cache/bench/dispatch-<time>.json (and dispatch.json), written
after each mode, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh
import httpx
from _targets import RESULTS_DIR, loadavg, machine_busy_ms, tree_cpu_ms, write_result

from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port
from opsconductor_testing.sshd import SshServer

# The test sshd skips the login profile unless asked; `slow` asks for it.
LOGIN_PROFILE = {"fast": False, "slow": True}
COMMAND = "echo hi"
GOAL_P99_MS, GOAL_RUNS_PER_S = 100.0, 50.0
TRACE_SETTLE_MS = 300.0  # traced runs: a pause after each, so its trailing work is its own


@dataclass
class Sample:
    execution_id: str = ""
    wall0: float = 0.0  # time.time() at the POST's start
    post_ms: float | None = None
    sse_open_ms: float | None = None
    output_ms: float | None = None  # POST start -> first `output` message at this client
    finished_ms: float | None = None
    status: str | None = None
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)  # filled from stored timestamps


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else None,
            "mean": statistics.fmean(values) if values else None}


# --- the client -----------------------------------------------------------------------------------

async def one_run(client: httpx.AsyncClient, job_id: str) -> Sample:
    sample = Sample(wall0=time.time())
    began = time.perf_counter()

    def ms() -> float:
        return (time.perf_counter() - began) * 1000

    try:
        response = await client.post(f"/api/v1/jobs/{job_id}/run", json={})
        sample.post_ms = ms()
        if response.status_code != 202:
            sample.error = f"run: {response.status_code} {response.text[:200]}"
            return sample
        sample.execution_id = response.json()["execution_id"]
        async with client.stream("GET", f"/api/v1/executions/{sample.execution_id}/events",
                                 headers={"Accept": "text/event-stream"}) as stream:
            sample.sse_open_ms = ms()
            if stream.status_code != 200:
                sample.error = f"events: {stream.status_code}"
                return sample
            event = None
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event == "output" and sample.output_ms is None:
                    sample.output_ms = ms()
                elif line.startswith("data:") and event == "finished":
                    sample.finished_ms = ms()
                    sample.status = json.loads(line.partition(":")[2]).get("status")
                    break
                elif not line:
                    event = None
        if sample.finished_ms is None:
            sample.error = "the stream ended before `finished`"
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    return sample


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


async def add_stages(client: httpx.AsyncClient, samples: list[Sample]) -> None:
    """Stored timestamps of each run (executor's clock = this host's clock), as ms after the
    POST started; then the differences between them."""
    semaphore = asyncio.Semaphore(8)

    async def one(sample: Sample) -> None:
        if not sample.execution_id:
            return
        async with semaphore:
            eid = sample.execution_id
            execution = (await client.get(f"/api/v1/executions/{eid}")).json()
            targets = (await client.get(f"/api/v1/executions/{eid}/targets")).json()["items"]
            output = (await client.get(f"/api/v1/executions/{eid}/output")).json()["items"]
        at = {"created": _ts(execution.get("created_at")),
              "claimed": _ts(execution.get("started_at")),
              "target_started": _ts(targets[0].get("started_at")) if targets else None,
              "first_output_read": _ts(output[0]["ts"]) if output else None,
              "target_finished": _ts(targets[0].get("finished_at")) if targets else None,
              "finished": _ts(execution.get("finished_at"))}
        points = {k: (v - sample.wall0) * 1000 for k, v in at.items() if v is not None}
        if sample.output_ms is not None:
            points["output_at_client"] = sample.output_ms
        if sample.post_ms is not None:
            points["post_answered"] = sample.post_ms
        sample.stages = points

    await asyncio.gather(*(one(s) for s in samples))


STAGES = [  # (label, from point, to point); point "start" is the POST's start at this client
    ("gateway + jobs (auth, job, resolve targets, policy) -> execution row", "start", "created"),
    ("execution row -> claimed by the executor", "created", "claimed"),
    ("claimed -> target started (engine picked it up)", "claimed", "target_started"),
    ("target started -> first output read from SSH", "target_started", "first_output_read"),
    ("first output read -> SSE message at the client", "first_output_read", "output_at_client"),
    ("(execution row -> POST answered at the client)", "created", "post_answered"),
]


def stage_values(samples: list[Sample], start: str, end: str) -> list[float]:
    out = []
    for sample in samples:
        points = {"start": 0.0, **sample.stages}
        if start in points and end in points:
            out.append(points[end] - points[start])
    return out


# --- CPU of the machine and of the parties ---------------------------------------------------------

def self_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


class CpuWindow:
    def __init__(self, platform_pid: int, sshd_pids: list[int]) -> None:
        self.platform_pid, self.sshd_pids = platform_pid, sshd_pids

    def __enter__(self) -> CpuWindow:
        self.load_before = loadavg()
        self.t0 = time.perf_counter()
        self.start = (machine_busy_ms()[0], tree_cpu_ms([self.platform_pid]),
                      tree_cpu_ms(self.sshd_pids), self_cpu_ms())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = (time.perf_counter() - self.t0) * 1000
        end = (machine_busy_ms()[0], tree_cpu_ms([self.platform_pid]),
               tree_cpu_ms(self.sshd_pids), self_cpu_ms())
        machine, platform, sshd, client = (b - a for a, b in zip(self.start, end, strict=True))
        self.result = {"wall_s": wall / 1000, "load_before": self.load_before,
                       "cpu_ms": {"platform": platform, "sshd": sshd, "client": client,
                                  "machine": machine},
                       "load_after": loadavg(),
                       "cpu_pct": {"platform": 100 * platform / wall, "sshd": 100 * sshd / wall,
                                   "client": 100 * client / wall,
                                   "other": 100 * max(machine - platform - sshd - client, 0) / wall,
                                   "machine": 100 * machine / wall}}


# --- tracing (--trace): a second embedded platform with timing wrappers, product code untouched ---
# The platform runs this file with --serve-traced: it wraps a few methods (class attributes, so
# every caller sees them) to log (start wall time, duration, kind, label), then runs `up` as usual.

TRACED: list[tuple[str, str, str, str]] = [  # (module, class, method, kind)
    ("opsconductor_db.database", "ServiceDatabase", "transaction", "cm"),
    ("opsconductor_runtime.embedded.host", "EmbeddedHost", "call", "async"),
    ("opsconductor_runtime.embedded.host", "EmbeddedRuntime", "publish", "async"),
    ("opsconductor_runtime.embedded.store", "HostStore", "execute", "async"),
    ("opsconductor_runtime.embedded.store", "HostStore", "execute_many", "async"),
    ("opsconductor_runtime.embedded.store", "HostStore", "fetch", "async"),
    ("opsconductor_jobs.service", "JobsService", "run", "async"),
    ("opsconductor_executor.service", "ExecutionService", "create", "async"),
    ("opsconductor_executor.runner", "Runner", "_claim", "async"),
    ("opsconductor_executor.hooks", "RunHooks", "target_started", "async"),
    ("opsconductor_executor.hooks", "RunHooks", "step_dispatched", "async"),
    ("opsconductor_executor.hooks", "RunHooks", "step_finished", "async"),
    ("opsconductor_executor.hooks", "RunHooks", "output", "async"),
    ("opsconductor_executor.hooks", "RunHooks", "target_finished", "async"),
    ("opsconductor_executor.hooks", "RunCredentials", "get", "async"),
    ("opsconductor_executor.output", "OutputCollector", "_enqueue", "sync"),
    ("opsconductor_connectors.pool", "SshPool", "session", "cm"),
    ("opsconductor_connectors.ssh_session", "SshSession", "start", "async"),
    ("opsconductor_gateway.live", "LiveHub", "publish", "sync"),
    ("opsconductor_core.tokens", "TokenVerifier", "verify", "async"),
    ("opsconductor_runtime.outbox", "OutboxRelay", "flush_once", "async"),
    ("sqlalchemy.ext.asyncio", "AsyncSession", "execute", "async"),
    ("sqlalchemy.ext.asyncio", "AsyncSession", "scalar", "async"),
    ("sqlalchemy.ext.asyncio", "AsyncSession", "get", "async"),
    ("sqlalchemy.ext.asyncio", "AsyncSession", "flush", "async"),
    ("sqlalchemy.ext.asyncio", "AsyncSession", "commit", "async"),
]


def _caller() -> str:
    """The innermost project function (outside opsconductor_db) on the stack."""
    frame = sys._getframe(3)
    while frame is not None and ("opsconductor_" not in frame.f_code.co_filename
                                 or "opsconductor_db" in frame.f_code.co_filename):
        frame = frame.f_back
    return frame.f_code.co_qualname if frame is not None else "?"


def _label(obj: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    import re

    name = type(obj).__name__
    if name == "ServiceDatabase":  # which code opened the transaction
        return f"tx {Path(urlsplit(obj.url).path).stem} <- {_caller()}"
    if name == "AsyncSession":
        database = Path(urlsplit(str(obj.bind.url)).path).stem if obj.bind is not None else "?"
        return f"sql {database} {method} <- {_caller()}"
    if name == "LiveHub":
        return f"LiveHub.publish {args[1][0].event if args[1] else ''}"
    if name == "EmbeddedHost":
        path = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", args[2])
        return f"call {kwargs.get('caller') or 'broker'}->{args[0]} {args[1]} {path}"
    if name == "EmbeddedRuntime":
        return f"publish {obj.app_id}: {args[1]}"
    if name == "HostStore":
        words = args[0].split()
        return f"broker-store {' '.join(words[:2])} {next((w for w in words if w.islower()), '')}"
    return f"{name}.{method}"


def install_tracer(path: str) -> None:
    import atexit
    import functools
    import importlib

    out = open(path, "w", buffering=1 << 20)  # closed at exit
    atexit.register(out.close)

    def note(label: str, began: float, took: float) -> None:
        out.write(json.dumps([began, took * 1000, label]) + "\n")

    def wrap(cls: type, method: str, kind: str) -> None:
        original = getattr(cls, method)
        if kind == "cm":
            @contextlib.asynccontextmanager
            async def traced_cm(self: Any, *args: Any, **kwargs: Any) -> Any:
                label, began, t0 = _label(self, method, args, kwargs), time.time(), time.perf_counter()
                async with original(self, *args, **kwargs) as value:
                    note(label + " (enter)", began, time.perf_counter() - t0)
                    yield value
                note(label, began, time.perf_counter() - t0)
            setattr(cls, method, traced_cm)
        elif kind == "async":
            @functools.wraps(original)
            async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
                label, began, t0 = _label(self, method, args, kwargs), time.time(), time.perf_counter()
                try:
                    return await original(self, *args, **kwargs)
                finally:
                    note(label, began, time.perf_counter() - t0)
            setattr(cls, method, traced)
        else:
            @functools.wraps(original)
            def traced_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
                began, t0 = time.time(), time.perf_counter()
                try:
                    return original(self, *args, **kwargs)
                finally:
                    note(_label(self, method, args, kwargs), began, time.perf_counter() - t0)
            setattr(cls, method, traced_sync)

    for module, cls, method, kind in TRACED:
        wrap(getattr(importlib.import_module(module), cls), method, kind)


class TracedPlatform(RunningPlatform):
    trace_path: Path = Path()

    def command(self) -> list[str]:
        argv = super().command()
        return [argv[0], str(Path(__file__).resolve()), "--serve-traced", str(self.trace_path),
                *argv[3:]]


def read_trace(path: Path) -> list[tuple[float, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            began, took, label = json.loads(line)
            rows.append((began, took, label))
    return sorted(rows)


TIMELINE = [  # (what, trace label, which occurrence's start or end)
    ("jobs: run handler starts", "JobsService.run", "start"),
    ("jobs -> targets: resolve answered", "call jobs->targets POST /internal/targets/resolve", "end"),
    ("executor: run request accepted (row + outbox committed)", "ExecutionService.create", "end"),
    ("executor: claim starts", "Runner._claim", "start"),
    ("executor: claim committed", "Runner._claim", "end"),
    ("engine: target_started hook called", "RunHooks.target_started", "start"),
    ("engine: target_started committed", "RunHooks.target_started", "end"),
    ("engine: credential fetched (executor -> targets)", "RunCredentials.get", "end"),
    ("engine: pooled SSH session checked out", "SshPool.session (enter)", "end"),
    ("engine: step_dispatched committed", "RunHooks.step_dispatched", "end"),
    ("ssh: command channel open", "SshSession.start", "end"),
    ("ssh: first output chunk read", "OutputCollector._enqueue", "start"),
    ("engine: step_finished committed", "RunHooks.step_finished", "end"),
    ("executor: output hook starts (batch flushed)", "RunHooks.output", "start"),
    ("executor: output chunks committed", "RunHooks.output", "end"),
    ("executor: execution.output published (broker row)", "publish executor: execution.output", "end"),
    ("gateway: output handed to the SSE hub", "LiveHub.publish output", "start"),
]


def trace_tables(samples: list[Sample], rows: list[tuple[float, float, str]]) -> dict[str, Any]:
    """Per run (window: POST start .. `finished` + settle): a timeline of first occurrences, and
    the count and summed duration of every traced kind of work."""
    timeline: dict[str, list[float]] = {what: [] for what, _, _ in TIMELINE}
    work: dict[str, list[tuple[int, float]]] = {}
    for sample in samples:
        if sample.error or sample.finished_ms is None:
            continue
        lo, hi = sample.wall0, sample.wall0 + (sample.finished_ms + TRACE_SETTLE_MS) / 1000
        mine = [r for r in rows if lo <= r[0] < hi]
        for what, label, edge in TIMELINE:
            hit = next((r for r in mine if r[2] == label), None)
            if hit is not None:
                at = hit[0] + (hit[1] / 1000 if edge == "end" else 0)
                timeline[what].append((at - lo) * 1000)
        kinds: dict[str, tuple[int, float]] = {}
        for _, took, label in mine:
            count, total = kinds.get(label, (0, 0.0))
            kinds[label] = (count + 1, total + took)
        for label, value in kinds.items():
            work.setdefault(label, []).append(value)
    runs = sum(1 for s in samples if not s.error and s.finished_ms is not None)
    return {
        "runs": runs,
        "timeline_ms_p50": {what: percentile(v, 50) for what, v in timeline.items()},
        "timeline_ms_p99": {what: percentile(v, 99) for what, v in timeline.items()},
        "per_run": {label: {"count": sum(c for c, _ in v) / runs, "ms": sum(t for _, t in v) / runs}
                    for label, v in sorted(work.items())},
        "client_output_ms_p50": percentile([s.output_ms for s in samples if s.output_ms], 50),
    }


# --- the phases ------------------------------------------------------------------------------------

async def ssh_floor(server: SshServer, runs: int = 20) -> dict[str, Any]:
    """`echo hi` on a held connection: what the SSH side alone costs per run."""
    key = asyncssh.import_private_key(server.client_private_key)
    # The server's own host key is the only one trusted: the floor is measured with the check on.
    pinned = ([asyncssh.import_public_key(server.host_public_key)], [], [])
    values = []
    async with asyncssh.connect(server.host, port=server.port, username=server.user,
                                client_keys=[key], known_hosts=pinned) as conn:
        for _ in range(runs):
            began = time.perf_counter()
            process = await conn.create_process(COMMAND)
            await process.stdout.readline()
            values.append((time.perf_counter() - began) * 1000)
            await process.wait()
    return summary(values)


async def sequential(client: httpx.AsyncClient, job_id: str, runs: int, warmup: int,
                     cpu: CpuWindow) -> dict[str, Any]:
    for _ in range(warmup):  # opens the pooled SSH connection, warms every path
        await one_run(client, job_id)
    samples: list[Sample] = []
    with cpu:
        for index in range(runs):
            samples.append(await one_run(client, job_id))
            if (index + 1) % 50 == 0:
                print(f"   {index + 1}/{runs}", file=sys.stderr, flush=True)
    await add_stages(client, samples)
    return describe(samples) | {"cpu": cpu.result,
                                "platform_cpu_ms_per_run": cpu.result["cpu_ms"]["platform"] / runs}


async def sustained(client: httpx.AsyncClient, job_id: str, concurrency: int, duration_s: float,
                    warmup_s: float, cpu: CpuWindow) -> dict[str, Any]:
    loop_start = time.perf_counter()
    window = (loop_start + warmup_s, loop_start + warmup_s + duration_s)
    timed: list[tuple[float, float, Sample]] = []

    async def worker() -> None:
        while time.perf_counter() < window[1]:
            began = time.perf_counter()
            sample = await one_run(client, job_id)
            timed.append((began, time.perf_counter(), sample))

    await asyncio.sleep(0)
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    with cpu:
        await asyncio.sleep(duration_s)
    await asyncio.gather(*tasks)
    ended_in = [s for _, end, s in timed if window[0] <= end < window[1]]
    started_in = [s for began, _, s in timed if window[0] <= began < window[1]]
    completed = [s for s in ended_in if s.finished_ms is not None]
    await add_stages(client, started_in)
    return describe(started_in) | {
        "concurrency": concurrency, "duration_s": duration_s, "completed": len(completed),
        "runs_per_s": len(completed) / duration_s,
        "failed_runs": sum(1 for s in ended_in if s.error or s.status != "succeeded"),
        "platform_cpu_ms_per_run": cpu.result["cpu_ms"]["platform"] / max(len(completed), 1),
        "cpu": cpu.result}


def describe(samples: list[Sample]) -> dict[str, Any]:
    good = [s for s in samples if not s.error]
    return {
        "runs": len(samples), "errors": [s.error for s in samples if s.error][:10],
        "error_count": sum(1 for s in samples if s.error),
        "not_succeeded": sum(1 for s in good if s.status != "succeeded"),
        "post_ms": summary([s.post_ms for s in good if s.post_ms is not None]),
        "sse_open_ms": summary([s.sse_open_ms for s in good if s.sse_open_ms is not None]),
        "output_ms": summary([s.output_ms for s in good if s.output_ms is not None]),
        "finished_ms": summary([s.finished_ms for s in good if s.finished_ms is not None]),
        "stages_ms": {label: summary(stage_values(good, a, b)) for label, a, b in STAGES},
        "samples": [asdict(s) for s in samples],
    }


# --- setup ---------------------------------------------------------------------------------------

def platform_env(mode: str) -> tuple[dict[str, str], str | None]:
    env = {"OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, "OPSC_TARGETS_ALLOW_LOOPBACK": "true",
           "OPSC_GATEWAY_RATE_PER_ADDRESS": "0", "OPSC_GATEWAY_RATE_PER_USER": "0"}
    if mode == "embedded":
        return env, None
    from opsconductor_testing.dapr import database_prefix, require_dapr

    try:
        env |= require_dapr("rabbitmq")
    except BaseException as exc:  # the tier helper skips outside pytest: say why, plainly
        sys.exit(f"Dapr mode needs eval \"$(scripts/dapr-tier.sh)\" first: {exc}")
    return env, database_prefix("bench")


def register(admin: httpx.Client, server: SshServer, name: str) -> str:
    response = admin.post("/api/v1/targets", json={
        "name": name, "host": server.host, "port": server.port, "username": server.user,
        "tags": ["bench-dispatch"], "host_key": server.host_public_key,
        "credential": {"type": "private_key", "private_key": server.client_private_key}})
    response.raise_for_status()
    target_id = str(response.json()["id"])
    job = admin.post("/api/v1/jobs", json={
        "name": f"dispatch-{name}", "description": "bench_dispatch: one target, echo hi",
        "steps": [{"name": "hi", "kind": "command", "command": COMMAND}],
        "targets": {"ids": [target_id]}})
    job.raise_for_status()
    return str(job.json()["id"])


async def run_mode(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env, prefix = platform_env(mode)
    servers = {shell: SshServer(work / f"sshd-{mode}-{shell}", login_profile=LOGIN_PROFILE[shell])
               for shell in args.shells}
    platform = RunningPlatform(data_dir=work / f"data-{mode}", port=free_port(), env=env,
                               log_path=work / f"platform-{mode}.log", runtime=mode,
                               pubsub="rabbitmq" if mode == "dapr" else None,
                               database_prefix=prefix)
    result: dict[str, Any] = {"mode": mode if mode == "embedded" else "dapr-rabbitmq",
                              "shells": {}}
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            server.directory.mkdir(parents=True)
            stack.callback(server.close)
            server.start()
        if mode != "embedded":
            from opsconductor_testing.dapr import rabbitmq_vhost

            platform.env["OPSC_RABBITMQ_URL"] = stack.enter_context(
                rabbitmq_vhost(platform.env["OPSC_RABBITMQ_URL"]))
            stack.callback(platform.drop_databases)
        print(f"-- starting {mode}", file=sys.stderr, flush=True)
        platform.start()
        stack.callback(platform.stop)
        assert platform.process is not None
        sshd_pids = [p.pid for s in servers.values() for p in s._processes]
        for shell, server in servers.items():
            result["shells"][shell] = {"floor_ms": await ssh_floor(server)}

        def client() -> httpx.AsyncClient:
            token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
            return httpx.AsyncClient(base_url=platform.url, timeout=60.0,
                                     headers={"Authorization": f"Bearer {token}"},
                                     limits=httpx.Limits(max_connections=200,
                                                         max_keepalive_connections=200))

        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            jobs = {shell: register(admin, server, f"local-{shell}")
                    for shell, server in servers.items()}
        for shell in args.shells:
            print(f"-- {mode}/{shell}: {args.runs} runs one at a time", file=sys.stderr, flush=True)
            async with client() as http:
                result["shells"][shell]["sequential"] = await sequential(
                    http, jobs[shell], args.runs, args.warmup_runs,
                    CpuWindow(platform.process.pid, sshd_pids))
        result["sustained"] = []
        for shell in args.load_shells:
            for concurrency in args.concurrency:
                print(f"-- {mode}/{shell}: {concurrency} in flight for {args.duration:g} s",
                      file=sys.stderr, flush=True)
                await asyncio.sleep(2)  # let the previous level's stragglers finish
                async with client() as http:
                    row = await sustained(http, jobs[shell], concurrency, args.duration,
                                          args.load_warmup, CpuWindow(platform.process.pid,
                                                                      sshd_pids))
                result["sustained"].append({"shell": shell} | row)
    return result


async def run_traced(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Embedded, fast shell, one run at a time with a pause after each, under the tracer."""
    env, _ = platform_env("embedded")
    server = SshServer(work / "sshd-traced")
    platform = TracedPlatform(data_dir=work / "data-traced", port=free_port(), env=env,
                              log_path=work / "platform-traced.log")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    platform.trace_path = RESULTS_DIR / "dispatch-trace.jsonl"  # kept: every traced call
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack:
        server.directory.mkdir(parents=True)
        stack.callback(server.close)
        server.start()
        print(f"-- traced embedded/fast: {args.trace_runs} runs", file=sys.stderr, flush=True)
        platform.start()
        stack.callback(platform.stop)
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            job_id = register(admin, server, "traced")
        async with httpx.AsyncClient(base_url=platform.url, timeout=60.0,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            for _ in range(args.warmup_runs):
                await one_run(http, job_id)
            for _ in range(args.trace_runs):
                samples.append(await one_run(http, job_id))
                await asyncio.sleep(TRACE_SETTLE_MS / 1000)
    # Stopped: the trace file is complete.
    return trace_tables(samples, read_trace(platform.trace_path))


# --- output ---------------------------------------------------------------------------------------

def _f(value: float | None) -> str:
    return "-" if value is None else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def tables(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [f"## Dispatch: POST .../run -> first output at an SSE client ({args.runs} runs, "
             f"one at a time; ms)", "",
             "| mode | shell | POST p50 | POST p99 | SSE open p50 | **output p50** | output p90 | "
             "**output p99** | output max | finished p50 | finished p99 | errors | SSH floor p50 "
             "| platform CPU ms/run | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for shell, data in res["shells"].items():
            seq = data["sequential"]
            o, f, p = seq["output_ms"], seq["finished_ms"], seq["post_ms"]
            lines.append(
                f"| {res['mode']} | {shell} | {_f(p['p50'])} | {_f(p['p99'])} | "
                f"{_f(seq['sse_open_ms']['p50'])} | **{_f(o['p50'])}** | {_f(o['p90'])} | "
                f"**{_f(o['p99'])}** | {_f(o['max'])} | {_f(f['p50'])} | {_f(f['p99'])} | "
                f"{seq['error_count'] + seq['not_succeeded']} | {_f(data['floor_ms']['p50'])} | "
                f"{_f(seq['platform_cpu_ms_per_run'])} | "
                f"{seq['cpu']['load_before'][0]} -> {seq['cpu']['load_after'][0]} |")
    lines += ["", f"Goal (not asserted): output p99 <= {GOAL_P99_MS:g} ms embedded. SSH floor: "
              f"`{COMMAND}` on an open connection from the benchmark itself.", "",
              "## Where the time goes (stored timestamps vs. the client's clock; ms, p50 / p99)",
              "", "| stage | " + " | ".join(f"{r['mode']}/{s}" for r in results
                                             for s in r["shells"]) + " |",
              "|---|" + "---|" * sum(len(r["shells"]) for r in results)]
    for label, _, _ in STAGES:
        cells = []
        for res in results:
            for data in res["shells"].values():
                st = data["sequential"]["stages_ms"][label]
                cells.append(f"{_f(st['p50'])} / {_f(st['p99'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Sustained runs (closed loop, runs in flight; dispatch = POST start -> first "
              "output at the client)", "",
              "| mode | shell | in flight | **completed runs/s** | dispatch p50 ms | **dispatch p99 "
              "ms** | finished p50 ms | failed | platform CPU ms/run | CPU % platform / sshd / "
              "client / other | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for row in res["sustained"]:
            cpu = row["cpu"]["cpu_pct"]
            lines.append(
                f"| {res['mode']} | {row['shell']} | {row['concurrency']} | "
                f"**{row['runs_per_s']:.1f}** | {_f(row['output_ms']['p50'])} | "
                f"**{_f(row['output_ms']['p99'])}** | {_f(row['finished_ms']['p50'])} | "
                f"{row['failed_runs'] + row['error_count']} | "
                f"{_f(row['platform_cpu_ms_per_run'])} | {cpu['platform']:.0f} / "
                f"{cpu['sshd']:.0f} / {cpu['client']:.0f} / {cpu['other']:.0f} | "
                f"{row['cpu']['load_before'][0]} -> {row['cpu']['load_after'][0]} |")
    lines += ["", f"Goal (not asserted): >= {GOAL_RUNS_PER_S:g} runs/s. CPU % is of one core "
              f"({os.cpu_count()} cores here); `other` is everything else on the machine."]
    return lines


def trace_lines(trace: dict[str, Any]) -> list[str]:
    lines = [f"## Traced embedded/fast ({trace['runs']} runs): timeline, ms after the POST started "
             f"(client saw output at p50 {_f(trace['client_output_ms_p50'])} ms)", "",
             "| point | p50 | p99 |", "|---|---|---|"]
    for what, value in trace["timeline_ms_p50"].items():
        lines.append(f"| {what} | {_f(value)} | {_f(trace['timeline_ms_p99'][what])} |")
    lines += ["", "## Traced: work per run, the 30 largest (count, summed wall ms; nested and "
              "concurrent items overlap; all of them in the JSON)", "",
              "| traced | per run | ms per run |", "|---|---|---|"]
    ranked = sorted(trace["per_run"].items(), key=lambda kv: -kv[1]["ms"])
    for label, value in [kv for kv in ranked if kv[1]["count"] >= 0.5][:30]:
        lines.append(f"| {label} | {value['count']:.1f} | {value['ms']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup-runs", type=int, default=10)
    parser.add_argument("--shells", default="fast,slow", help="fast (SHLVL=1) and/or slow (~/.bashrc)")
    parser.add_argument("--load-shells", default="fast", help="shells for the sustained phase ('' = none)")
    parser.add_argument("--concurrency", default="5,10,20")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--load-warmup", type=float, default=3.0)
    parser.add_argument("--modes", default="embedded", help="embedded and/or dapr (RabbitMQ)")
    parser.add_argument("--trace-runs", type=int, default=0,
                        help="also trace this many embedded runs (a separate platform)")
    args = parser.parse_args()
    args.shells = [s for s in args.shells.split(",") if s]
    args.load_shells = [s for s in args.load_shells.split(",") if s]
    args.shells += [s for s in args.load_shells if s not in args.shells]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if os.geteuid() != 0:
        sys.exit("run as root: the test sshd needs /run/sshd and logs in as the current user")
    work = Path(tempfile.mkdtemp(prefix="opsc-bench-dispatch-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    trace = None

    def save() -> Path:
        report = {"when": datetime.now().astimezone().isoformat(timespec="seconds"),
                  "cores": os.cpu_count(), "command": COMMAND, "runs": args.runs,
                  "goals": {"p99_ms": GOAL_P99_MS, "runs_per_s": GOAL_RUNS_PER_S},
                  "results": results, "trace": trace}
        return write_result("dispatch", report, stamp)

    try:
        for mode in [m for m in args.modes.split(",") if m]:
            results.append(asyncio.run(run_mode(mode, args, work)))
            save()
        if args.trace_runs:
            trace = asyncio.run(run_traced(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = save()
    print("\n".join(tables(results, args) + (["", *trace_lines(trace)] if trace else [])))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-traced"]:  # the traced platform (see TracedPlatform)
        import runpy

        install_tracer(sys.argv[2])
        sys.argv = ["opsconductor_platform", *sys.argv[3:]]
        runpy.run_module("opsconductor_platform", run_name="__main__", alter_sys=True)
    else:
        main()
