"""Benchmark (issue 3): what the Dapr sidecars add. A measurement, not a test: nothing is asserted
(and pytest does not collect it).

1. GET /api/v1/users/me through the gateway at a constant offered rate (vegeta, open loop),
   embedded mode against Dapr mode (gateway -> its daprd -> users' daprd -> users, pub/sub on
   RabbitMQ): p50 / p90 / p99 / max / errors. Each rate runs `--warmup` s, then `--duration` s
   are measured.
2. The sidecars alone, in the same Dapr run: users' /healthz and /users/me called directly on
   its app port (with its app token) against the same calls through the gateway's sidecar HTTP
   API (/v1.0/invoke/users/method/...), i.e. two sidecars and one mTLS hop.
3. CPU % (mean over the measured window) and peak RSS of every daprd, app and platform process,
   sampled from /proc every 0.5 s.
4. Publish-to-delivery latency through daprd on RabbitMQ and on Redis Streams, and through the
   embedded broker (_dapr_bench_pubsub.py).

    eval "$(scripts/dapr-tier.sh)"     # daprd, sentry, PostgreSQL, Redis, RabbitMQ
    uv run python tests/benchmarks/bench_dapr_latency.py [--rate 300 --rate 50] [--duration 30]

Prints Markdown tables; writes .cache/bench/dapr_latency-<time>.json (and dapr_latency.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from _dapr_bench_load import (
    Sampler,
    Target,
    attack,
    cmdline,
    descendants,
    environ,
    option,
    vegeta_binary,
)
from _dapr_bench_pubsub import run_all as pubsub_runs
from _targets import write_result

from opsconductor_testing.dapr import database_prefix, rabbitmq_vhost
from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port

DAPR_PUBLISHED = {"rate": 1000, "added_p50_ms": 1.1, "added_p99_ms": 2.9}
PLATFORM_ENV = {
    "OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, "OPSC_LOG_LEVEL": "WARNING",
    # Edge limits would turn a load test into a 429 test.
    "OPSC_GATEWAY_RATE_PER_ADDRESS": "0", "OPSC_GATEWAY_RATE_PER_USER": "0",
}


def classify(pid: int, root: int, mode: str) -> tuple[str, str]:
    argv = cmdline(pid)
    name = Path(argv[0]).name if argv else "?"
    if name == "daprd":
        return f"daprd {option(argv, '--app-id')}", "daprd"
    if name == "sentry":
        return "sentry", "sentry"
    factory = option(argv, "--factory") or ""
    if factory.startswith("opsconductor_"):
        return f"app {factory.split('.')[0].removeprefix('opsconductor_')}", "app (uvicorn)"
    if pid == root:
        return (("platform (all apps, one process)", "embedded platform") if mode == "embedded"
                else ("opsconductor up (supervisor)", "supervisor"))
    return f"{name} {pid}", "other"


def watched(platform: RunningPlatform, mode: str) -> dict[int, tuple[str, str]]:
    assert platform.process is not None
    root = platform.process.pid
    return {pid: classify(pid, root, mode) for pid in descendants(root)}


def sidecar_targets(platform: RunningPlatform, token: str) -> list[Target]:
    """Direct and through-the-sidecars targets of users, from the ports and tokens
    `opsconductor up` gave its own child processes."""
    assert platform.process is not None
    daprd = {option(cmdline(pid), "--app-id"): pid for pid in descendants(platform.process.pid)
             if cmdline(pid) and Path(cmdline(pid)[0]).name == "daprd"}
    gateway, users = cmdline(daprd["gateway"]), cmdline(daprd["users"])
    via = f"http://127.0.0.1:{option(gateway, '--dapr-http-port')}/v1.0/invoke/users/method"
    direct = f"http://127.0.0.1:{option(users, '--app-port')}"
    dapr_token = environ(daprd["gateway"])["DAPR_API_TOKEN"]
    app_token = environ(daprd["users"])["APP_API_TOKEN"]
    bearer = {"Authorization": f"Bearer {token}"}
    return [
        Target("users /healthz direct", f"{direct}/healthz"),
        Target("users /healthz via 2 sidecars", f"{via}/healthz", {"dapr-api-token": dapr_token}),
        Target("users /users/me direct", f"{direct}/users/me",
               {"dapr-api-token": app_token, **bearer}),
        Target("users /users/me via 2 sidecars", f"{via}/users/me",
               {"dapr-api-token": dapr_token, **bearer}),
    ]


def settle(platform: RunningPlatform, token: str, processes: dict[int, tuple[str, str]]) -> float:
    """Between runs: until a saturated run's backlog has drained (the platform's processes
    nearly idle) and 10 requests in a row succeed quickly (in Dapr mode that also closes a
    circuit breaker the overload opened). Returns the seconds it took."""
    began = time.monotonic()
    deadline = began + 180
    streak = 0
    with platform.client(token) as client:
        while time.monotonic() < deadline:
            sampler = Sampler(processes)
            sampler.start()
            time.sleep(2)
            busy = sum(s.cpu_percent for s in sampler.stop())
            if busy > 25:
                streak = 0
                continue
            while streak < 10 and time.monotonic() < deadline:
                sent = time.perf_counter()
                try:
                    fast = client.get("/api/v1/users/me").is_success and (
                        time.perf_counter() - sent < 0.25)
                except httpx.HTTPError:
                    fast = False
                streak = streak + 1 if fast else 0
                time.sleep(0.1 if fast else 1.0)
            if streak >= 10:
                break
    return time.monotonic() - began


def run_mode(mode: str, args: argparse.Namespace, vegeta: Path, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        env = dict(PLATFORM_ENV)
        prefix = None
        if mode == "dapr":
            server = urlsplit(os.environ.get("OPSC_TEST_POSTGRES_URL",
                                             "postgresql://opsc:opsc@127.0.0.1:5432/postgres"))
            env["OPSC_POSTGRES_URL"] = f"postgresql://{server.netloc}"
            env["OPSC_RABBITMQ_URL"] = stack.enter_context(rabbitmq_vhost(os.environ.get(
                "OPSC_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")))
            prefix = database_prefix("bench")
        platform = RunningPlatform(data_dir=work / f"data-{mode}", port=free_port(), env=env,
                                   log_path=work / f"platform-{mode}.log", runtime=mode,
                                   pubsub="rabbitmq" if mode == "dapr" else None,
                                   database_prefix=prefix)
        print(f"-- starting {mode} mode", file=sys.stderr, flush=True)
        stack.callback(platform.drop_databases)
        platform.start()
        stack.callback(platform.stop)
        # Lowest rate first: an overload (and the breakers it opens) must not leak into the
        # runs a mode sustains.
        for rate in sorted(args.rate):
            token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
            targets = [Target(f"gateway /api/v1/users/me ({mode})",
                              f"{platform.url}/api/v1/users/me",
                              {"Authorization": f"Bearer {token}"})]
            if mode == "dapr" and not args.no_pairs:
                targets += sidecar_targets(platform, token)
            for target in targets:
                processes = watched(platform, mode)
                settled_s = settle(platform, token, processes)
                print(f"-- {target.name} at {rate}/s (settled in {settled_s:.0f} s)",
                      file=sys.stderr, flush=True)
                row = attack(vegeta, target, rate, args.warmup, args.duration, work, processes)
                row["mode"], row["settled_s"] = mode, settled_s
                rows.append(row)
                print(f"   p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                      f"errors {row['errors']}/{row['sent']} {row['error_reasons'] or ''}",
                      file=sys.stderr, flush=True)
    return rows


# -- output -----------------------------------------------------------------------------------

def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def latency_table(rows: list[dict[str, Any]], rate: int) -> list[str]:
    at = [r for r in rows if r["rate"] == rate]
    out = [f"### Offered {rate} req/s (measured {at[0]['duration_s']} s after warm-up)", "",
           "| target | answered ok/s | p50 ms | p90 ms | p99 ms | max ms | errors | "
           "p50 first -> last 5 s | load avg 1 min before | other CPU % |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in at:
        out.append(f"| {r['target']} | {r['ok_rps']:.0f} | {_ms(r['p50_ms'])} | "
                   f"{_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['max_ms'])} | "
                   f"{r['errors']}/{r['sent']} | {_ms(r['p50_first_5s_ms'])} -> "
                   f"{_ms(r['p50_last_5s_ms'])} | {r['load_avg_before'][0]:.2f} | "
                   f"{r['other_cpu_percent']:.0f} |")
    pairs = [("gateway /api/v1/users/me (dapr)", "gateway /api/v1/users/me (embedded)",
              "end to end: Dapr mode vs embedded"),
             ("users /healthz via 2 sidecars", "users /healthz direct", "sidecars only: /healthz"),
             ("users /users/me via 2 sidecars", "users /users/me direct",
              "sidecars only: /users/me")]
    failing = [r for r in at if r.get("error_reasons")]
    if failing:
        out += ["", "Why requests failed (sidecar errors tell an overload's breaker and health "
                "gate from a broken route):", ""]
        out += [f"- {r['target']}: " + ", ".join(f"{n} x {why}" for why, n in sorted(
            r["error_reasons"].items(), key=lambda kv: -kv[1])) for r in failing]
    named = {r["target"]: r for r in at}
    lines = []
    for slow, fast, label in pairs:
        if slow in named and fast in named:
            a, b = named[slow], named[fast]
            added = " / ".join(_ms(a[k] - b[k]) for k in ("p50_ms", "p90_ms", "p99_ms"))
            ratio = " / ".join(f"x{a[k] / b[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms"))
            if any(x["errors"] > 0.01 * x["sent"] or x["ok_rps"] < 0.95 * rate for x in (a, b)):
                label += " (a side is saturated: not a latency comparison)"
            lines.append(f"| {label} | {added} | {ratio} |")
    if lines:
        out += ["", "| comparison | added ms p50 / p90 / p99 | ratio p50 / p90 / p99 |",
                "|---|---|---|", *lines,
                f"| Dapr's published figure (HTTP, 2 sidecars, {DAPR_PUBLISHED['rate']} rps) | "
                f"{DAPR_PUBLISHED['added_p50_ms']} / - / {DAPR_PUBLISHED['added_p99_ms']} | - |"]
    return out


def resource_table(rows: list[dict[str, Any]], rate: int) -> list[str]:
    out = [f"### CPU and memory at {rate} req/s (mean CPU % of one core over the measured "
           "window; peak RSS)", "",
           "| run | process kind | n | CPU % total | CPU % each | peak RSS MiB (largest) |",
           "|---|---|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["rate"] == rate):
        for kind, k in sorted(r["by_kind"].items()):
            out.append(f"| {r['target']} | {kind} | {k['count']} | {k['cpu_percent_total']:.0f} "
                       f"| {k['cpu_percent_each']:.0f} | {k['peak_rss_mib_max']:.0f} |")
    return out


def daprd_detail(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Per process, end-to-end Dapr runs", "",
           "| rate | process | CPU % | peak RSS MiB |", "|---:|---|---:|---:|"]
    for r in rows:
        if r["target"].startswith("gateway") and r["mode"] == "dapr":
            for p in sorted(r["processes"], key=lambda p: -p["cpu_percent"]):
                out.append(f"| {r['rate']} | {p['label']} | {p['cpu_percent']:.1f} | "
                           f"{p['peak_rss_mib']:.0f} |")
    return out


def pubsub_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Publish to delivery", "",
           "| broker | events | rate/s | delivered | dup | publish call p50 / p99 ms | "
           "delivery p50 ms | p90 ms | p99 ms | max ms |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        d, p = r["delivery"], r["publish_call"]
        name = r["broker"] if r["broker"] == "embedded" else f"daprd -> {r['broker']} -> daprd"
        out.append(f"| {name} | {r['events']} | {r['rate']:g} | {r['delivered']} | "
                   f"{r['duplicates']} | {_ms(p['p50_ms'])} / {_ms(p['p99_ms'])} | "
                   f"{_ms(d['p50_ms'])} | {_ms(d['p90_ms'])} | {_ms(d['p99_ms'])} | "
                   f"{_ms(d['max_ms'])} |")
    return out


def render(result: dict[str, Any]) -> str:
    rows, pubsub = result["invocation"], result["pubsub"]
    lines = [f"## Dapr sidecar benchmark ({result['started']}, {result['cores']} cores, load "
             f"average at start {' / '.join(f'{x:.2f}' for x in result['load_avg_start'])})", ""]
    for rate in sorted({r["rate"] for r in rows}, reverse=True):
        lines += [*latency_table(rows, rate), "", *resource_table(rows, rate), ""]
    if any(r["mode"] == "dapr" for r in rows):
        lines += [*daprd_detail(rows), ""]
    if pubsub:
        lines += [*pubsub_table(pubsub), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, action="append",
                        help="offered req/s; repeat for several (default: 300 and 50)")
    parser.add_argument("--duration", type=int, default=30, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up seconds per run")
    parser.add_argument("--modes", default="embedded,dapr")
    parser.add_argument("--no-pairs", action="store_true", help="skip the sidecar-only pairs")
    parser.add_argument("--events", type=int, default=500, help="pub/sub events per broker")
    parser.add_argument("--event-rate", type=float, default=50.0)
    parser.add_argument("--brokers", default="rabbitmq,redis", help="'' skips Dapr pub/sub")
    parser.add_argument("--no-pubsub", action="store_true")
    parser.add_argument("--render", type=Path, help="only print the tables of a saved JSON")
    args = parser.parse_args()
    args.rate = args.rate or [300, 50]
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return

    vegeta = vegeta_binary()
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="opsc-bench-dapr-") as tmp:
        for mode in [m for m in args.modes.split(",") if m]:
            rows += run_mode(mode, args, vegeta, Path(tmp))
    pubsub = [] if args.no_pubsub else pubsub_runs(
        [b for b in args.brokers.split(",") if b], args.events, args.event_rate)

    result = {"started": started, "cores": os.cpu_count(), "load_avg_start": load_start,
              "load_avg_end": os.getloadavg(), "warmup_s": args.warmup,
              "dapr_published": DAPR_PUBLISHED, "invocation": rows, "pubsub": pubsub}
    path = write_result("dapr_latency", result, started)
    print(render(result))
    print(f"JSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
