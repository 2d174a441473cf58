"""Runs `opsconductor up` as a real subprocess on a free loopback port, for end-to-end tests.

`runtime="embedded"` is the one-process mode (SQLite files in the data dir); `runtime="dapr"`
starts every app beside a real daprd, with PostgreSQL databases named `<database_prefix><app>`
and pub/sub on `pubsub` (server URLs come from `env`, see opsconductor_testing.dapr).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# A JSON log line, the platform's own or daprd's, at warning level or above.
_WARNING_OR_WORSE = re.compile(r'"level": ?"(warning|error|critical|fatal)"')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningPlatform:
    data_dir: Path
    port: int
    env: dict[str, str]
    log_path: Path
    runtime: str = "embedded"
    pubsub: str | None = None
    database_prefix: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return self.runtime if self.runtime == "embedded" else f"{self.runtime}-{self.pubsub}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "opsconductor_platform", "up", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--runtime", self.runtime]
        if self.runtime == "dapr":
            argv += ["--pubsub", self.pubsub or "rabbitmq"]
            if self.database_prefix:
                argv += ["--database-prefix", self.database_prefix]
        return argv

    def start(self, extra_env: dict[str, str] | None = None, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or (60.0 if self.runtime == "embedded" else 240.0)
        env = {**os.environ, **self.env, **(extra_env or {})}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"platform exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"platform not healthy in {timeout_s}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            if self._log:
                self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def process_ids(self, marker: str) -> list[int]:
        """Running processes below this platform's own whose command line contains `marker`
        (Dapr mode: e.g. "opsconductor_executor.main:create_app" is the executor app)."""
        if self.process is None:
            return []
        parents: dict[int, int] = {}
        # os.listdir, not Path.glob: glob stats each entry, which fails for a process that
        # ended meanwhile.
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields and fields[0] != "Z":
                parents[int(name)] = int(fields[1])
        below: set[int] = set()
        frontier = {self.process.pid}
        while frontier:
            frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
            below |= frontier
        found = []
        for pid in sorted(below):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker.encode() in argv:
                found.append(pid)
        return found

    def output(self) -> str:
        if self._log and not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def warnings_logged(self, last: int = 80, width: int = 600) -> str:
        """The last warnings and errors of the platform's log, each cut to `width` characters:
        what a failed test's report shows (the log itself may be gone by the time anyone looks)."""
        lines = [line[:width] for line in self.output().splitlines()
                 if _WARNING_OR_WORSE.search(line)]
        return "\n".join(lines[-last:])

    def login(self, username: str, password: str) -> dict[str, Any]:
        response = httpx.post(self.url + "/api/v1/auth/login",
                              json={"username": username, "password": password}, timeout=30.0)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    # -- looking inside a service's own database ----------------------------------------------
    def database_url(self, app_id: str) -> str:
        """The service's database: its SQLite file, or its PostgreSQL database (plain URL)."""
        if self.runtime == "embedded":
            return str(self.data_dir / f"{app_id}.db")
        server = self.env["OPSC_POSTGRES_URL"].rstrip("/")
        return f"{server}/{self.database_prefix}{app_id}"

    def outbox_rows(self, app_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(topic, event) of every event waiting in the service's outbox, oldest first."""
        sql = "SELECT topic, payload FROM outbox ORDER BY seq"
        if self.runtime == "embedded":
            db = sqlite3.connect(self.database_url(app_id))
            try:
                rows = db.execute(sql).fetchall()
            finally:
                db.close()
        else:
            from opsconductor_testing.postgres import query

            rows = query(self.database_url(app_id), sql)
        return [(topic, json.loads(payload)) for topic, payload in rows]

    def drop_databases(self) -> None:
        """Dapr mode: drop this platform's databases (after it stopped)."""
        if self.runtime == "embedded" or not self.database_prefix:
            return
        from opsconductor_testing.postgres import drop_databases_with_prefix

        drop_databases_with_prefix(self.env["OPSC_POSTGRES_URL"].rstrip("/") + "/postgres",
                                   self.database_prefix)


ADMIN_PASSWORD = "e2e-admin-password-0001"
