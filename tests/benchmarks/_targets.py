"""Shared by bench_fanout.py and bench_executor_memory.py: many loopback OpenSSH targets, the
credentials our side and the rivals log in with, and the small measuring helpers.

The servers are libs/testing's `SshServer` (one sshd process per 16 loopback addresses, one port,
one host key), set up as bench_connection_tests.py does, with public-key login by the fixture's
ed25519 client key and the host key pinned on every side. The login is a local account of our own
(`BENCH_USER`, shell /bin/sh; not root, whose ~/.bashrc here runs `pyenv init` on every SSH
command), not the fixture's `opsc-sshtest`: every test server locks that one again when it stops,
and tests running beside a benchmark would lock it mid-run. Ours has no password at all ("*",
which sshd does not treat as locked), so only the key logs in. bench_connection_tests.py could
use this module too. Its sshd listener and CPU helpers are imported here rather than copied.

Not collected by pytest (no test_ prefix); import it from a script in this folder.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench_connection_tests import cpu_ms, listener_pids, sshd_processes

from opsconductor_testing.sshd import SSHD, SshServer, loopback_addresses

ROOT = Path(__file__).resolve().parents[2]
BENCH_USER = "opsc-bench"
RESULTS_DIR = ROOT / ".cache" / "bench"

__all__ = [
    "RESULTS_DIR",
    "ROOT",
    "LoopbackTargets",
    "cpu_ms",
    "loadavg",
    "raise_fd_limit",
    "report",
    "rss_kb",
    "tree_cpu_ms",
    "tree_pids",
    "write_result",
]


def bench_user() -> str:
    """`BENCH_USER`, created when missing (needs root): key logins only, never locked by tests."""
    if os.geteuid() != 0:
        raise PermissionError("the benchmark's login account can only be created as root")
    if subprocess.run(["id", "-u", BENCH_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", BENCH_USER],
            check=True,
            capture_output=True,
        )
    # "*": no password can match; unlike useradd's "!" sshd does not refuse it as locked.
    subprocess.run(["usermod", "--password", "*", BENCH_USER], check=True, capture_output=True)
    return BENCH_USER


@dataclass
class LoopbackTargets:
    """`count` targets, one per 127.0.x.y address, on one port of a set of sshd processes."""

    count: int
    max_sessions: int = 64
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="opsc-bench-fanout-")))
    target_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = SshServer(
            self.work / "sshd",
            addresses=loopback_addresses(self.count),
            max_startups=max(1000, self.count),
            max_sessions=self.max_sessions,
        )
        self.user = ""
        # Target ids are UUIDs, as the targets service hands them to the executor.
        self.target_ids = [str(uuid.UUID(int=n + 1)) for n in range(self.count)]

    def __enter__(self) -> LoopbackTargets:
        if not Path(SSHD).is_file():
            sys.exit("OpenSSH is needed: bash scripts/services.sh install sshd (openssh-server)")
        self.server.directory.mkdir(parents=True)
        try:
            self.server.start()
            self.user = bench_user()
            # sshd reads authorized_keys as that user: let it through our private temp dirs.
            for path in (self.work, self.server.directory):
                path.chmod(0o711)
            self.server.authorized_keys_path.chmod(0o644)
            # The rivals read the key from a file as that file's owner (root): keep it private.
            self.server.client_key_path.chmod(0o600)
        except BaseException as exc:  # the fixture's skip/fail outside pytest: say why, plainly
            self.close()
            sys.exit(f"sshd or its test account is not available: {exc}")
        self.known_hosts.write_text(
            "".join(f"[{a}]:{self.port} {self.host_public_key}\n" for a in self.addresses)
        )
        self.listeners = listener_pids(self.server)
        if len(self.listeners) != sshd_processes(self.server):
            self.close()
            sys.exit(f"expected {sshd_processes(self.server)} sshd listeners, found {len(self.listeners)}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- what the clients need ------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return self.server.addresses

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def host_public_key(self) -> str:
        return self.server.host_public_key

    @property
    def client_key_path(self) -> Path:
        return self.server.client_key_path

    @property
    def client_private_key(self) -> str:
        return self.server.client_private_key

    @property
    def known_hosts(self) -> Path:
        """The pinned key for every address, as OpenSSH looks it up on a non-default port."""
        return self.work / "known_hosts"

    def spec(self) -> dict[str, object]:
        """What a worker process needs to reach the targets (JSON-friendly)."""
        return {
            "addresses": self.addresses,
            "target_ids": self.target_ids,
            "port": self.port,
            "user": self.user,
            "client_key_path": str(self.client_key_path),
            "host_public_key": self.host_public_key,
        }

    def server_cpu_ms(self) -> float:
        return tree_cpu_ms(self.listeners)

    def sshd_processes(self) -> int:
        return len(self.listeners)

    def open_connections(self) -> int:
        return self.server.established_connections()

    def wait_idle(self, timeout_s: float = 30.0) -> int:
        """Wait until no TCP connection to the servers is left (closed sessions wound down)."""
        deadline = time.monotonic() + timeout_s
        while (left := self.open_connections()) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.3)  # let sshd reap the per-connection children before CPU is read
        return left


def _stat_fields(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_pids(roots: list[int]) -> set[int]:
    """`roots` and all their live descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(_stat_fields(stat.parent.name)[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def tree_cpu_ms(roots: list[int]) -> float:
    """CPU of `roots` and every live descendant, with the time of their reaped children.

    A live process counts its own run time from /proc/<pid>/schedstat (exact; its utime/stime in
    /proc/<pid>/stat are tick samples, which this VM's kernel under-reports for short bursts) plus
    cutime/cstime (the children it reaped, from the kernel's exit accounting). While connections
    stay open the difference of two readings is exact; across a connection's close it is not:
    an exiting process's time reaches its parent's cutime lower than schedstat had it (about
    10 ms per connection here). bench_connection_tests.server_cpu_ms reads the listeners' exit
    accounting only, so it sees a connection's CPU once it closes.
    """
    total_ms = 0.0
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    for pid in tree_pids(roots):
        try:
            own_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
            reaped = sum(int(value) for value in _stat_fields(pid)[13:15])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile: its time is in its parent now
        total_ms += own_ns / 1e6 + reaped * tick_ms
    return total_ms


def raise_fd_limit(wanted: int = 65536) -> int:
    """Soft RLIMIT_NOFILE up to `wanted` (at most the hard limit; as root, the hard one too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and its anonymous / file parts, in KiB, from /proc/<pid>/status."""
    wanted = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[wanted[name]] = int(value.split()[0])
    return out


def machine_busy_ms() -> tuple[float, float]:
    """(busy ms, elapsed ms x cores) of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) * tick_ms, sum(fields) * tick_ms


def loadavg() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def write_result(name: str, result: dict[str, object], stamp: str | None = None) -> Path:
    """`<name>.json` (the latest run) and, given `stamp`, a kept copy `<name>-<stamp>.json`;
    returns the path to cite."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    latest = RESULTS_DIR / f"{name}.json"
    latest.write_text(text)
    if stamp is None:
        return latest
    kept = RESULTS_DIR / f"{name}-{stamp}.json"
    kept.write_text(text)
    return kept


def report(name: str, result: dict[str, object], markdown: str) -> None:
    """Keep the result (with its markdown) and print the markdown and where it was written."""
    path = write_result(name, {**result, "markdown": markdown}, time.strftime("%Y%m%dT%H%M%S"))
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(markdown)
    print(f"\nwritten: {shown}")
