"""Benchmark: resident memory of an executor process holding 1,000 pooled, idle SSH connections
(one per loopback OpenSSH target), against the same process before it opened them. Prints a
Markdown table and writes .cache/bench/executor_memory.json. A measurement, not a test.

    uv run python tests/benchmarks/bench_executor_memory.py [--connections 1000] [--layer auto]
        [--session-per-command]
        [--concurrency 50] [--hold 5]

The measured process is a fresh worker per layer (so nothing else lives in it): it imports the
executor's code, builds the credentials, warms up (a 10-target run on a throwaway pool, closed:
lazily imported modules and crypto tables are loaded once per process, not per connection), reads
its RSS ("before"), then runs `uname -a` twice on every target through one pool and keeps the pool
open: every connection is now logged in, idle and pooled, and holds the kept shell a connection
starts with its second command (none with --session-per-command). It reads its RSS again after a
garbage collection ("after") and once more after holding them `--hold` seconds. "per connection" is
(after - before) / connections.
- layer "engine": one `Engine.run` of a one-step job over all targets (apps/executor), the
  connections stay in the SshPool it was given; "connectors": SshPool directly, under the same
  concurrency bound. "auto" measures the engine when it imports, else the connectors layer.
Targets: 1,000 addresses 127.0.x.y on 63 sshd processes (16 listen sockets each), MaxStartups
1000; the worker's file descriptor limit is raised (resource.setrlimit) before it opens anything.
The server side (every sshd process of the targets) is reported for context: its process count
and summed PSS (proportional set size: shared pages split among the processes sharing them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _ours import chosen_layers, engine_import_error, make_side, target_credentials
from _targets import LoopbackTargets, loadavg, raise_fd_limit, report, rss_kb, tree_pids

COMMAND = "uname -a"
WARM_UP_TARGETS = 10


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass  # exited meanwhile
    return 0


def settled_rss() -> dict[str, int]:
    gc.collect()
    time.sleep(0.5)  # lets asyncssh finish the writes it queued; RSS read while nothing runs
    return rss_kb()


async def pool_in_use(side: Any, concurrency: int) -> Any:
    """Two rounds: a connection keeps its shell from its second command on."""
    first = await side.round(concurrency, COMMAND)
    return first if first.failed else await side.round(concurrency, COMMAND)


async def hold_connections(
    layer: str, spec: dict[str, Any], concurrency: int, hold_s: float
) -> dict[str, Any]:
    credentials = target_credentials(spec)
    few = dict(list(credentials.items())[:WARM_UP_TARGETS])
    warm = make_side(layer, few)
    outcome = await pool_in_use(warm, WARM_UP_TARGETS)
    await warm.close()
    if outcome.failed:
        raise RuntimeError(f"warm-up failed: {outcome.failures}")
    objects_before = len(gc.get_objects())
    before = settled_rss()

    side = make_side(layer, credentials)
    started = time.monotonic()
    outcome = await pool_in_use(side, concurrency)
    opened_s = time.monotonic() - started
    after = settled_rss()
    objects_after = len(gc.get_objects())
    stats = side.pool.stats().as_dict()
    # Tell the parent the connections are held; it counts them on the server side meanwhile.
    print(json.dumps({"holding": stats["open"]}), flush=True)
    await asyncio.sleep(hold_s)
    held = settled_rss()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await side.close()
    return {
        "layer": layer,
        "ok": outcome.ok,
        "failures": outcome.failures[:5],
        "failed": outcome.failed,
        "open_s": opened_s,
        "pool": stats,
        "rss_kb": {"before": before, "after": after, "held": held},
        "gc_objects": {"before": objects_before, "after": objects_after},
    }


def worker(layer: str, concurrency: int, hold_s: float) -> None:
    raise_fd_limit()
    spec = json.loads(sys.stdin.readline())
    if layer.startswith("engine"):
        import opsconductor_executor.engine  # noqa: F401  (imported before any reading)
    imported = settled_rss()
    result = asyncio.run(hold_connections(layer, spec, concurrency, hold_s))
    result["rss_kb"]["imported"] = imported
    print(json.dumps(result), flush=True)


def measure(layer: str, targets: LoopbackTargets, args: argparse.Namespace) -> dict[str, Any]:
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            layer,
            "--concurrency",
            str(args.concurrency),
            "--hold",
            str(args.hold),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(targets.spec()) + "\n")
    process.stdin.flush()
    holding = process.stdout.readline()
    if not holding:
        process.wait()
        raise RuntimeError(f"the {layer} worker exited with {process.returncode} before holding")
    server = {
        "established": targets.open_connections(),
        "sshd_processes": len(tree_pids(targets.listeners)),
        "sshd_pss_mb": sum(pss_kb(pid) for pid in tree_pids(targets.listeners)) / 1024,
    }
    process.stdin.write("\n")
    process.stdin.flush()
    result = json.loads(process.stdout.read().strip().splitlines()[-1])
    process.wait()
    result["server"] = server
    targets.wait_idle(60)
    rss = result["rss_kb"]
    result["delta_mb"] = (rss["after"]["rss"] - rss["before"]["rss"]) / 1024
    result["held_delta_mb"] = (rss["held"]["rss"] - rss["before"]["rss"]) / 1024
    result["kb_per_connection"] = (rss["after"]["rss"] - rss["before"]["rss"]) / targets.count
    result["anon_kb_per_connection"] = (rss["after"]["anon"] - rss["before"]["anon"]) / targets.count
    result["gc_objects_per_connection"] = (
        result["gc_objects"]["after"] - result["gc_objects"]["before"]
    ) / targets.count
    return result


def markdown(results: list[dict[str, Any]], count: int, load: dict[str, list[float]]) -> str:
    lines = [
        "| layer | connections held | RSS imported MB | RSS before MB | RSS after MB | after hold MB"
        " | delta MB | KB per connection | anon KB per conn. | GC objects per conn. | open s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rss = r["rss_kb"]
        lines.append(
            f"| {r['layer']} | {r['pool']['open']} | {rss['imported']['rss'] / 1024:.1f}"
            f" | {rss['before']['rss'] / 1024:.1f} | {rss['after']['rss'] / 1024:.1f}"
            f" | {rss['held']['rss'] / 1024:.1f} | {r['delta_mb']:.1f} | {r['kb_per_connection']:.1f}"
            f" | {r['anon_kb_per_connection']:.1f} | {r['gc_objects_per_connection']:.0f}"
            f" | {r['open_s']:.1f} |"
        )
    lines.append("")
    for r in results:
        s = r["server"]
        lines.append(
            f"{r['layer']}: {r['ok']} of {count} targets ran the command, {r['failed']} failed;"
            f" server side while held: {s['established']} established TCP connections,"
            f" {s['sshd_processes']} sshd processes using {s['sshd_pss_mb']:.0f} MB (PSS)"
        )
        lines += [f"    {f}" for f in r["failures"]]
    lines.append(f"load average before {load['before']}, after {load['after']} ({os.cpu_count()} cores)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--layer", choices=["auto", "engine", "connectors", "both"], default="auto")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold before the last reading")
    parser.add_argument("--session-per-command", action="store_true",
                        help="also measure each layer with kept shells off (a server session per command)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.concurrency, args.hold)
        return
    engine_error = engine_import_error()
    layers = chosen_layers(args.layer, engine_error, session_per_command=args.session_per_command)
    raise_fd_limit()
    load_before = loadavg()
    with LoopbackTargets(args.connections) as targets:
        results = [measure(layer, targets, args) for layer in layers]
    load = {"before": load_before, "after": loadavg()}
    report(
        "executor_memory",
        {
            "connections": args.connections,
            "concurrency": args.concurrency,
            "hold_s": args.hold,
            "engine_error": engine_error,
            "loadavg": load,
            "cores": os.cpu_count(),
            "results": results,
        },
        markdown(results, args.connections, load),
    )


if __name__ == "__main__":
    main()
