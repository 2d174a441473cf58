"""Benchmark: GET /api/v1/users/me through the gateway at 200 concurrent clients, beside a bare
FastAPI app returning the same JSON, measured in the same run with wrk. Prints a table and writes
.benchmarks/gateway.json. A measurement, not a test: nothing is asserted.

    uv run python tests/benchmarks/bench_gateway.py [--duration 15] [--connections 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port

ROOT = Path(__file__).resolve().parents[2]
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(url: str, token: str | None, connections: int, duration_s: int) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "10s"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    percentiles = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if "50" not in percentiles or "99" not in percentiles:
        raise RuntimeError(f"wrk gave no latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": to_ms(percentiles["50"]), "p99_ms": to_ms(percentiles["99"]),
            "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
            "socket_errors": 1.0 if errors else 0.0}


def wait_healthy(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became healthy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk (scripts/bench.sh installs it)")

    work = Path(tempfile.mkdtemp(prefix="opsc-bench-"))
    platform = RunningPlatform(
        data_dir=work / "data", port=free_port(), log_path=work / "platform.log",
        env={"OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, "OPSC_LOG_LEVEL": "WARNING",
             # Edge limits would turn a load test into a 429 test; they are measured elsewhere.
             "OPSC_GATEWAY_RATE_PER_ADDRESS": "0", "OPSC_GATEWAY_RATE_PER_USER": "0"})
    platform.start()
    bare = None
    try:
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        body = httpx.get(platform.url + "/api/v1/users/me",
                         headers={"Authorization": f"Bearer {token}"}).json()
        bare_port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bare_users_me:app", "--port", str(bare_port),
             "--log-level", "warning", "--no-access-log"],
            cwd=Path(__file__).parent, env={**os.environ, "BARE_BODY": json.dumps(body)})
        wait_healthy(f"http://127.0.0.1:{bare_port}/api/v1/users/me")

        warm = max(3, args.duration // 5)
        run_wrk(f"{platform.url}/api/v1/users/me", token, args.connections, warm)
        gateway = run_wrk(f"{platform.url}/api/v1/users/me", token, args.connections,
                          args.duration)
        run_wrk(f"http://127.0.0.1:{bare_port}/api/v1/users/me", None, args.connections, warm)
        rival = run_wrk(f"http://127.0.0.1:{bare_port}/api/v1/users/me", None, args.connections,
                        args.duration)
    finally:
        if bare:
            bare.terminate()
            bare.wait()
        platform.stop()

    result = {
        "connections": args.connections, "duration_s": args.duration, "cores": os.cpu_count(),
        "gateway": gateway, "bare_fastapi": rival,
        "ratio": {"throughput": gateway["rps"] / rival["rps"],
                  "p50": gateway["p50_ms"] / rival["p50_ms"],
                  "p99": gateway["p99_ms"] / rival["p99_ms"]},
    }
    out_dir = ROOT / ".benchmarks"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "gateway.json").write_text(json.dumps(result, indent=2))
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name in ("gateway", "bare_fastapi"):
        row = result[name]
        print(f"{name:24}{row['rps']:>10.0f}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}"
              f"{row['non_2xx']:>10.0f}")
    ratio = result["ratio"]
    print(f"gateway / bare: throughput x{ratio['throughput']:.3f}, p50 x{ratio['p50']:.2f}, "
          f"p99 x{ratio['p99']:.2f}")


if __name__ == "__main__":
    main()
