"""Helpers of bench_dapr_latency.py: a constant-rate HTTP load run with vegeta, its latency
summary, and CPU / RSS sampling of processes from /proc.

vegeta sends at a fixed rate whatever the server does (open loop): a slow answer does not delay
the next request, so queueing shows in the latencies instead of being hidden by fewer requests
(coordinated omission). One attack covers warm-up plus measurement; the warm-up seconds are cut
from the results by timestamp.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def vegeta_binary() -> Path:
    """The cached build (scripts/build-vegeta.sh builds it once, ~30 s)."""
    out = subprocess.run([str(ROOT / "scripts" / "build-vegeta.sh")], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/build-vegeta.sh failed:\n{out.stderr}")
    return Path(out.stdout.strip())


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    return {"p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "max_ms": values[-1] if values else math.nan}


# -- /proc sampling ---------------------------------------------------------------------------

def _cpu_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _rss_kib(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return None


def parent_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[1])


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def environ(pid: int) -> dict[str, str]:
    """A child's environment (ports and tokens `opsconductor up` gave its own processes)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already counted in user
    return total - idle, total


@dataclass
class ProcessStats:
    label: str
    kind: str
    cpu_percent: float
    peak_rss_mib: float


@dataclass
class Sampler:
    """Samples the given processes every `interval_s` in a thread: CPU time and RSS."""

    processes: dict[int, tuple[str, str]]  # pid -> (label, kind)
    interval_s: float = 0.5
    _first: dict[int, int] = field(default_factory=dict)
    _last: dict[int, int] = field(default_factory=dict)
    _peak: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0
    _elapsed: float = 0.0
    _machine: tuple[int, int] = (0, 0)
    machine_busy_percent: float = 0.0

    def _sample(self) -> None:
        for pid in self.processes:
            ticks, rss = _cpu_ticks(pid), _rss_kib(pid)
            if ticks is not None:
                self._first.setdefault(pid, ticks)
                self._last[pid] = ticks
            if rss is not None:
                self._peak[pid] = max(self._peak.get(pid, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._started = time.monotonic()
        self._machine = _machine_ticks()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> list[ProcessStats]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        self._elapsed = time.monotonic() - self._started
        busy, total = _machine_ticks()
        # In % of one core, as the per-process figures: 200 = both cores busy.
        self.machine_busy_percent = (100.0 * (os.cpu_count() or 1) * (busy - self._machine[0])
                                     / max(1, total - self._machine[1]))
        stats = []
        for pid, (label, kind) in self.processes.items():
            used_s = (self._last.get(pid, 0) - self._first.get(pid, 0)) / _CLK_TCK
            stats.append(ProcessStats(label, kind, 100.0 * used_s / self._elapsed,
                                      self._peak.get(pid, 0) / 1024.0))
        return stats


def by_kind(stats: list[ProcessStats]) -> dict[str, dict[str, float]]:
    """Per process kind: how many, CPU % summed and per process, the largest peak RSS."""
    kinds: dict[str, dict[str, float]] = {}
    for item in stats:
        row = kinds.setdefault(item.kind, {"count": 0, "cpu_percent_total": 0.0,
                                           "peak_rss_mib_max": 0.0, "peak_rss_mib_total": 0.0})
        row["count"] += 1
        row["cpu_percent_total"] += item.cpu_percent
        row["peak_rss_mib_max"] = max(row["peak_rss_mib_max"], item.peak_rss_mib)
        row["peak_rss_mib_total"] += item.peak_rss_mib
    for row in kinds.values():
        row["cpu_percent_each"] = row["cpu_percent_total"] / row["count"]
    return kinds


# -- one constant-rate run --------------------------------------------------------------------

def failure_reason(code: int, error: str, body_b64: str) -> str:
    """Why one request failed, in a few words: the client's own error (timeout), the sidecar's
    error (breaker open, app unhealthy...: what tells an overload from a broken route), or the
    status the app answered with."""
    if error:
        return "client: " + ("timeout" if "deadline exceeded" in error else error[:60])
    try:
        body = json.loads(base64.b64decode(body_b64))
    except ValueError:
        body = None
    if isinstance(body, dict) and str(body.get("errorCode", "")).startswith("ERR_"):
        detail = str(body.get("message", "")).rsplit("err: ", 1)[-1]
        return f"sidecar {code} {body['errorCode']}: {detail[:80]}"
    if isinstance(body, dict) and body.get("title"):
        return f"app {code}: {str(body['title'])[:60]}"
    return f"HTTP {code}"


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def attack(vegeta: Path, target: Target, rate: int, warmup_s: int, duration_s: int,
           work: Path, watched: dict[int, tuple[str, str]]) -> dict[str, Any]:
    """GET `target` at `rate` per second for warmup + duration; the summary of the measured
    part, with the watched processes' CPU and RSS over it."""
    stem = work / (re.sub(r"[^A-Za-z0-9]+", "-", target.name).strip("-") + f"-{rate}")
    targets_file = stem.with_suffix(".targets")
    lines = [f"GET {target.url}", *(f"{k}: {v}" for k, v in target.headers.items()), ""]
    targets_file.write_text("\n".join(lines))
    results = stem.with_suffix(".bin")
    argv = [str(vegeta), "attack", f"-targets={targets_file}", f"-rate={rate}/s",
            f"-duration={warmup_s + duration_s}s", "-timeout=10s", f"-output={results}",
            "-keepalive=true"]
    load_before = os.getloadavg()
    started_ns = time.time_ns()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(warmup_s)
    sampler = Sampler({**watched, process.pid: ("vegeta (load generator)", "load generator")})
    sampler.start()
    _, stderr = process.communicate(timeout=warmup_s + duration_s + 60)
    usage = sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"vegeta attack failed: {stderr.decode(errors='replace')}")
    csv_text = subprocess.run([str(vegeta), "encode", "--to", "csv", str(results)],
                              capture_output=True, text=True, check=True).stdout
    cut_ns = started_ns + warmup_s * 1_000_000_000
    latencies: list[float] = []
    per_second: dict[int, list[float]] = {}
    sent, errors, codes = 0, 0, {}  # type: ignore[var-annotated]
    reasons: dict[str, int] = {}
    last_sent_ns, last_done_ns = cut_ns, cut_ns
    for row in csv.reader(csv_text.splitlines()):
        ts, code, latency_ns, error = int(row[0]), int(row[1]), int(row[2]), row[5]
        if ts < cut_ns:
            continue
        sent += 1
        last_sent_ns = max(last_sent_ns, ts)
        last_done_ns = max(last_done_ns, ts + latency_ns)
        codes[str(code)] = codes.get(str(code), 0) + 1
        if error or not 200 <= code < 300:
            errors += 1
            why = failure_reason(code, error, row[6])
            reasons[why] = reasons.get(why, 0) + 1
        latencies.append(latency_ns / 1e6)  # every request, failed ones too: nothing hidden
        per_second.setdefault((ts - cut_ns) // 1_000_000_000, []).append(latency_ns / 1e6)
    results.unlink(missing_ok=True)
    # Latency growing second by second means a queue that never drains: the rate is past
    # what the system sustains.
    trend = [{"second": s, "requests": len(v), **latency_summary(v)}
             for s, v in sorted(per_second.items())]
    return {
        "target": target.name, "rate": rate, "duration_s": duration_s, "sent": sent,
        "offered_rps": sent / max(1e-9, (last_sent_ns - cut_ns) / 1e9),
        # Answers per second until the last answer came: below the offered rate when saturated.
        "ok_rps": (sent - errors) / max(1e-9, (last_done_ns - cut_ns) / 1e9),
        "errors": errors, "status_codes": codes, "error_reasons": reasons,
        **latency_summary(latencies),
        "p50_first_5s_ms": latency_summary(
            [x for s, v in per_second.items() if s < 5 for x in v])["p50_ms"],
        "p50_last_5s_ms": latency_summary(
            [x for s, v in per_second.items() if s >= duration_s - 5 for x in v])["p50_ms"],
        "per_second": trend,
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "processes": [vars(s) for s in usage], "by_kind": by_kind(usage),
        "machine_busy_percent": sampler.machine_busy_percent,
        # CPU the benchmark did not account for: other work on the machine competing with it.
        "other_cpu_percent": max(0.0, sampler.machine_busy_percent
                                 - sum(s.cpu_percent for s in usage)),
    }
