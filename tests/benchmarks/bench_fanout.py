"""Benchmark: `uname -a` fanned out to 100 and 500 loopback OpenSSH targets, our executor beside
ansible-core and parallel-ssh in the same run. Prints Markdown tables with the ratios and writes
.cache/bench/fanout.json. A measurement, not a test: nothing is asserted.

    uv run python tests/benchmarks/bench_fanout.py [--targets 100,500] [--layer auto]
        [--concurrency 50] [--extra-concurrency 500] [--warm-rounds 5] [--repeat 1]
        [--session-per-command]

Needs openssh-server (`bash scripts/services.sh install sshd`) and root (sshd's /run/sshd and the
fixture's login account). Targets: one 127.0.x.y address each, 16 per sshd process, one port, one
host key, the fixture's test account (shell /bin/sh) with its ed25519 client key (see _targets.py).

Every side does the same work per target: TCP connect, key exchange, check the host key against
the pinned one, public-key login, run `uname -a`, collect its output and exit status.
- ours, layer "engine": `Engine.run` (apps/executor) over an SshPool, job concurrency N;
  layer "connectors": SshPool directly under a semaphore of N (used when the engine is missing).
  cold = a new pool (new connections); warm = the same run again over the pooled connections,
  several rounds, reported as target-commands per second (median round). Pooled connections
  keep their user's shell open between commands (libs/connectors, "Kept shells");
  --session-per-command adds each layer again with that off (a server session per command).
  --repeat R runs the whole comparison R times, the order of the phases rotated each time, and
  reports each row's median (its ok/failed columns count target-commands over all rounds).
- parallel-ssh: ParallelSSHClient(pool_size=N), run_command + join + read every host's output, in
  a worker process (wall time excludes interpreter start and imports, as for ours). It has no
  host key verification at all (nothing to pin), so it does slightly less than the others.
- ansible-core: `ansible all -m raw -a 'uname -a' -f N` on a generated inventory (ansible_host,
  port, user, private key), host_key_checking on, pipelining on, no facts (ad-hoc), ssh with
  StrictHostKeyChecking=yes and a known_hosts holding every pinned key. Wall time is the whole
  command, as an operator runs it; its startup alone (`--list-hosts`) is shown for reference.
  Ansible keeps its default ssh_args (ControlMaster=auto, ControlPersist=60s, -C) with a fresh
  ControlPath dir per run; the persisted masters are ended (by PID) after the timing.
Key exchange: asyncssh and libssh2 both negotiate curve25519-sha256 with OpenSSH 9.2; Ansible's
ssh is given the same (-o KexAlgorithms=curve25519-sha256), as its default sntrup761 hybrid costs
~100 ms of client CPU per connection (see bench_connection_tests.py).
CPU columns: ours = this process (RUSAGE_SELF); parallel-ssh = the worker's own reading;
Ansible = its reaped processes (RUSAGE_CHILDREN) plus the persisted ssh masters; server = every
sshd process of the targets (listeners and all descendants, see _targets.tree_cpu_ms). Ours is
read while the pooled connections are still open (exact per-process run times); the rivals' after
their connections closed, so it comes from the kernel's exit accounting, which on this VM reads
lower than the exact figure (closing our pool "loses" ~10 ms per connection in the same sum). So
the server column compares rows of one tool, not ours with the rivals'. Machine = the whole
machine's busy time during the row (/proc/stat): client, targets and anything else running.
The floor rows: the targets' own work in our cold round (machine less ours) spread over every
core, as a fraction of Ansible's wall time. The targets share this machine, so no client's cold
round can be shorter than that here: a floor above 0.2 puts the cold goal out of this harness's
reach, whatever the client does. The ceiling rows, likewise for warm rounds: the commands per
second the targets could serve with every core to themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from typing import Any

from _ours import chosen_layers, engine_import_error, make_side, target_credentials
from _rivals import ansible_run, ansible_startup, pssh_run, pssh_worker
from _targets import LoopbackTargets, cpu_ms, loadavg, machine_busy_ms, raise_fd_limit, report

COMMAND = "uname -a"


async def our_rows(
    layer: str, targets: LoopbackTargets, concurrency: int, warm_rounds: int
) -> list[dict[str, Any]]:
    """Cold: a new pool and engine, one run; warm: `warm_rounds` more runs on the same pool."""
    credentials = target_credentials(targets.spec())
    side = make_side(layer, credentials)
    rows = []
    try:
        for mode in ["cold"] + ["warm"] * warm_rounds:
            gc.collect()
            server_before, self_before = targets.server_cpu_ms(), cpu_ms(resource.RUSAGE_SELF)
            machine_before = machine_busy_ms()[0]
            started = time.monotonic()
            outcome = await side.round(concurrency, COMMAND)
            wall = time.monotonic() - started
            machine = machine_busy_ms()[0] - machine_before
            rows.append(
                row(
                    f"ours ({layer})",
                    mode,
                    targets,
                    concurrency,
                    wall,
                    outcome.ok,
                    outcome.failures,
                    cpu_ms(resource.RUSAGE_SELF) - self_before,
                    targets.server_cpu_ms() - server_before,
                    machine,
                )
            )
    finally:
        await side.close()
    targets.wait_idle()
    return rows


def row(
    tool: str,
    mode: str,
    targets: LoopbackTargets,
    concurrency: int,
    wall: float,
    ok: int,
    failures: list[str],
    client_cpu: float,
    server_cpu: float,
    machine_cpu: float,
) -> dict[str, Any]:
    n = targets.count
    return {
        "tool": tool,
        "mode": mode,
        "targets": n,
        "concurrency": concurrency,
        "wall_s": wall,
        "rate": n / wall,
        "ok": ok,
        "failed": len(failures),
        "failures": failures[:5],
        "client_cpu_ms_per_target": client_cpu / n,
        "server_cpu_ms_per_target": server_cpu / n,
        "machine_cpu_ms_per_target": machine_cpu / n,
    }


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (tool, mode, concurrency), in first-seen order: the median by wall time, with
    every round's rate kept; ok and failed count target-commands over all its rounds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["tool"], r["mode"], r["concurrency"]), []).append(r)
    merged = []
    for rounds in groups.values():
        middle = dict(sorted(rounds, key=lambda r: r["wall_s"])[len(rounds) // 2])
        # The median wall time (the mean of the middle two for an even count); the CPU columns
        # are the upper middle round's.
        middle["wall_s"] = statistics.median(r["wall_s"] for r in rounds)
        middle["rate"] = middle["targets"] / middle["wall_s"]
        middle["rounds"] = len(rounds)
        middle["round_rates"] = [round(r["rate"], 1) for r in rounds]
        middle["round_walls"] = [round(r["wall_s"], 3) for r in rounds]
        middle["ok"] = sum(r["ok"] for r in rounds)
        middle["failed"] = sum(r["failed"] for r in rounds)
        middle["failures"] = [f for r in rounds for f in r["failures"]][:5]
        merged.append(middle)
    return merged


async def warm_up(layer: str, targets: LoopbackTargets) -> None:
    """Not measured: imports, crypto setup, page cache; a handful of targets, then closed."""
    spec = targets.spec()
    few = {k: v for k, v in list(target_credentials(spec).items())[:4]}
    side = make_side(layer, few)
    try:
        outcome = await side.round(4, COMMAND)
    finally:
        await side.close()
    if outcome.failed:
        sys.exit(f"warm-up failed on the {layer} layer: {outcome.failures}")


def bench_one(targets: LoopbackTargets, layers: list[str], args: argparse.Namespace) -> dict[str, Any]:
    load_before = loadavg()
    for layer in layers:
        asyncio.run(warm_up(layer, targets))
        targets.wait_idle()
    phases: list[Callable[[], list[dict[str, Any]]]] = [
        partial(lambda layer, c: asyncio.run(our_rows(layer, targets, c, args.warm_rounds)), layer, c)
        for layer in layers
        for c in [args.concurrency, *args.extra_concurrency]
    ]
    phases.append(lambda: [measure_rival("parallel-ssh", targets, args.concurrency, pssh_run)])
    phases.append(lambda: [measure_rival("ansible-core", targets, args.concurrency, ansible_run)])
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeat):
        # Rotated each repeat, so no tool always runs first (or right after Ansible).
        shift = repeat % len(phases)
        for phase in phases[shift:] + phases[:shift]:
            rows += phase()
    return {
        "targets": targets.count,
        "rows": merge(rows),
        "ansible_startup_s": ansible_startup(targets),
        "sshd_processes": targets.sshd_processes(),
        "port": targets.port,
        "loadavg": {"before": load_before, "after": loadavg()},
    }


def measure_rival(name: str, targets: LoopbackTargets, concurrency: int, run: Any) -> dict[str, Any]:
    server_before, machine_before = targets.server_cpu_ms(), machine_busy_ms()[0]
    result = run(targets, concurrency, COMMAND)
    machine = machine_busy_ms()[0] - machine_before
    left = targets.wait_idle()  # every connection closed: its server CPU is all counted
    server = targets.server_cpu_ms() - server_before
    if left:
        result["failures"].append(f"{left} connection(s) still open after the run")
    return row(
        name,
        "cold",
        targets,
        concurrency,
        result["wall_s"],
        result["ok"],
        result["failures"],
        result["client_cpu_ms"],
        server,
        machine,
    )


def ratios(result: dict[str, Any], concurrency: int) -> dict[str, Any]:
    rows = result["rows"]
    ansible = next(r for r in rows if r["tool"] == "ansible-core")
    pssh = next(r for r in rows if r["tool"] == "parallel-ssh")
    out = {}
    for r in rows:
        if not r["tool"].startswith("ours") or r["concurrency"] != concurrency:
            continue
        if r["mode"] == "cold":
            out[f"{r['tool']} cold / ansible-core"] = r["wall_s"] / ansible["wall_s"]
            out[f"{r['tool']} cold / parallel-ssh"] = r["wall_s"] / pssh["wall_s"]
    return out


def target_bounds(result: dict[str, Any], concurrency: int) -> dict[str, dict[str, float]]:
    """What the targets' own work (the machine's busy time less ours) leaves, per row of ours.
    The targets share this machine, so no client can do better than if they had every core to
    themselves: cold, that time as a fraction of Ansible's wall time (a floor for the ratio);
    warm, the target-commands per second they could serve (a ceiling for the rate)."""
    rows = result["rows"]
    ansible = next(r for r in rows if r["tool"] == "ansible-core")
    cores = os.cpu_count() or 1
    bounds: dict[str, dict[str, float]] = {"cold": {}, "warm": {}}
    for r in rows:
        if not r["tool"].startswith("ours") or r["concurrency"] != concurrency:
            continue
        targets_ms = max(r["machine_cpu_ms_per_target"] - r["client_cpu_ms_per_target"], 1e-3)
        bounds[r["mode"]][r["tool"]] = (
            targets_ms * r["targets"] / cores / 1000 / ansible["wall_s"] if r["mode"] == "cold"
            else cores * 1000 / targets_ms)
    return bounds


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| targets | tool | mode | conc. | wall s | target-cmds/s | client CPU ms/target"
        " | server CPU ms/target | machine CPU ms/target | ok | failed |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for r in result["rows"]:
            mode = f"{r['mode']} (median of {r['rounds']})" if r["rounds"] > 1 else r["mode"]
            lines.append(
                f"| {r['targets']} | {r['tool']} | {mode} | {r['concurrency']} | {r['wall_s']:.2f} "
                f"| {r['rate']:.0f} | {r['client_cpu_ms_per_target']:.1f} "
                f"| {r['server_cpu_ms_per_target']:.1f} | {r['machine_cpu_ms_per_target']:.1f} "
                f"| {r['ok']} | {r['failed']} |"
            )
    lines += [
        "",
        f"| targets | ratio (wall time, concurrency {args.concurrency}) | measured | goal |",
        "|---:|---|---:|---|",
    ]
    for result in results:
        for name, value in result["ratios"].items():
            goal = "≤ 0.2" if name.endswith("ansible-core") else "≤ 1.0"
            lines.append(f"| {result['targets']} | {name} | x{value:.2f} | {goal} |")
        for tool, floor in result["bounds"]["cold"].items():
            lines.append(
                f"| {result['targets']} | floor: the targets' own CPU during {tool} cold, on all"
                f" {os.cpu_count()} cores at once / ansible-core | x{floor:.2f} | (bounds the above) |"
            )
        for tool, ceiling in result["bounds"]["warm"].items():
            lines.append(
                f"| {result['targets']} | ceiling: target-cmds/s the targets' own CPU during {tool}"
                f" warm allows on all {os.cpu_count()} cores | {ceiling:.0f} | (bounds the warm rate) |"
            )
        for r in result["rows"]:
            if r["tool"].startswith("ours") and r["mode"] == "warm":
                lines.append(
                    f"| {result['targets']} | {r['tool']} warm, conc. {r['concurrency']}: target-cmds/s"
                    f" (rounds: {', '.join(str(x) for x in r['round_rates'])}) | {r['rate']:.0f} | ≥ 1000 |"
                )
    lines.append("")
    for result in results:
        failures = [f"{r['tool']} {r['mode']}: {f}" for r in result["rows"] for f in r["failures"]]
        lines.append(
            f"{result['targets']} targets: {result['sshd_processes']} sshd processes; Ansible startup"
            f" alone (--list-hosts) {result['ansible_startup_s']:.2f} s; load average before"
            f" {result['loadavg']['before']}, after {result['loadavg']['after']} ({os.cpu_count()} cores)"
        )
        lines += [f"    {f}" for f in failures]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {
        name: metadata.version(name) for name in ("asyncssh", "ansible-core", "parallel-ssh", "ssh2-python")
    }
    out["openssh"] = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr.strip()
    out["python"] = platform.python_version()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--pssh-worker":
        pssh_worker()  # the parallel-ssh side, in its own process (see _rivals.py)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="100,500", help="comma-separated target counts")
    parser.add_argument(
        "--layer",
        choices=["auto", "engine", "connectors", "both"],
        default="auto",
        help="auto: the engine when it imports, else the connectors layer",
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--extra-concurrency", default="500", help="ours only; comma-separated, or ''")
    parser.add_argument("--warm-rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="whole comparisons, order rotated; medians")
    parser.add_argument("--session-per-command", action="store_true",
                        help="also measure each layer with kept shells off (a server session per command)")
    args = parser.parse_args()
    args.extra_concurrency = [int(c) for c in args.extra_concurrency.split(",") if c.strip()]
    counts = [int(n) for n in args.targets.split(",")]
    engine_error = engine_import_error()
    layers = chosen_layers(args.layer, engine_error, session_per_command=args.session_per_command)
    fd_limit = raise_fd_limit()

    results = []
    for count in counts:
        print(f"{count} targets ...", flush=True)
        with LoopbackTargets(count) as targets:
            result = bench_one(targets, layers, args)
        result["ratios"] = ratios(result, args.concurrency)
        result["bounds"] = target_bounds(result, args.concurrency)
        results.append(result)
    report(
        "fanout",
        {
            "command": COMMAND,
            "layers": layers,
            "engine_error": engine_error,
            "fd_limit": fd_limit,
            "concurrency": args.concurrency,
            "extra_concurrency": args.extra_concurrency,
            "warm_rounds": args.warm_rounds,
            "cores": os.cpu_count(),
            "uname": " ".join(platform.uname()),
            "versions": versions(),
            "results": results,
        },
        markdown(results, args),
    )


if __name__ == "__main__":
    main()
