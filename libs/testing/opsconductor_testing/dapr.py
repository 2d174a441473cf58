"""The Dapr tier: what a test needs to run the platform through real daprd sidecars.

Needs daprd and sentry (scripts/build-daprd.sh, scripts/build-sentry.sh), PostgreSQL, and the
broker under test (RabbitMQ or Redis). scripts/dapr-tier.sh provides all of them and prints the
variables below. A missing piece skips the test loudly, or fails it under
OPSC_REQUIRE_ALL_TIERS=1 (CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from opsconductor_testing.databases import require_postgres
from opsconductor_testing.postgres import POOL_PREFIX
from opsconductor_testing.tiers import missing_dependency

REPO_ROOT = Path(__file__).resolve().parents[3]
RABBITMQ_ENV = "OPSC_TEST_RABBITMQ_URL"
REDIS_ENV = "OPSC_TEST_REDIS_URL"
BROKER_ENV = {"rabbitmq": RABBITMQ_ENV, "redis": REDIS_ENV}
BROKER_PORT = {"rabbitmq": 5672, "redis": 6379}
HOW_TO = 'run scripts/dapr-tier.sh and eval its output (eval "$(scripts/dapr-tier.sh)")'


def binary(name: str, env_var: str, cached: str) -> Path | None:
    """Where `opsconductor up --runtime dapr` will find `name` (same search order)."""
    for candidate in (os.environ.get(env_var), REPO_ROOT / ".cache" / "daprd" / cached,
                      Path.home() / ".dapr" / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                      timeout=2):
            return True
    except OSError:
        return False


def require_dapr(pubsub: str | None = None,
                 brokers: dict[str, str] | None = None) -> dict[str, str]:
    """Skip (or fail in CI) unless everything the Dapr tier needs is here; returns the env the
    platform needs: server URLs (OPSC_POSTGRES_URL, OPSC_RABBITMQ_URL / OPSC_REDIS_URL).
    `brokers` (from the `dapr_brokers` fixture) replaces the broker URLs of the environment."""
    for name, env_var, cached in (("daprd", "OPSC_DAPRD", "current"),
                                  ("sentry", "OPSC_DAPR_SENTRY", "sentry")):
        if binary(name, env_var, cached) is None:
            missing_dependency(f"{name}: not built; {HOW_TO}")
    admin = require_postgres()
    if not reachable(admin, 5432):
        missing_dependency(f"PostgreSQL at {where(admin)} is not reachable; {HOW_TO}")
    parts = urlsplit(admin)
    env = {"OPSC_POSTGRES_URL": f"postgresql://{parts.netloc}"}
    for broker in [pubsub] if pubsub else []:
        url = (brokers or {}).get(broker) or os.environ.get(BROKER_ENV[broker])
        if not url:
            missing_dependency(f"{broker}: set {BROKER_ENV[broker]}; {HOW_TO}")
        if not reachable(url, BROKER_PORT[broker]):
            missing_dependency(f"{broker} at {where(url)} is not reachable; {HOW_TO}")
        env["OPSC_RABBITMQ_URL" if broker == "rabbitmq" else "OPSC_REDIS_URL"] = url
    return env


def where(url: str) -> str:
    """host:port of a URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def database_prefix(label: str = "e2e") -> str:
    """Per-test database names the session's leftover sweep recognises (postgres.DatabasePool
    drops opsc_test_<dead pid>_* at the start of a later session)."""
    return f"{POOL_PREFIX}{os.getpid()}_{label}{uuid.uuid4().hex[:6]}_"


# -- broker namespaces: a test session's queues and streams never meet another session's ----------

@contextlib.contextmanager
def rabbitmq_vhost(base_url: str) -> Iterator[str]:
    """A virtual host of its own, deleted at the end with everything in it. Needs rabbitmqctl and
    root (as scripts/services.sh); otherwise the base URL is used as it is."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if os.geteuid() != 0 or not Path(ctl).exists():
        yield base_url
        return
    parts = urlsplit(base_url)
    name = f"{POOL_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:6]}"
    # Like scripts/services.sh: keep the Erlang port mapper on loopback.
    env = {**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"}

    def ctl_run(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], env=env, check=True, capture_output=True, timeout=120)

    ctl_run("add_vhost", name)
    ctl_run("set_permissions", "-p", name, unquote(parts.username or "guest"), ".*", ".*", ".*")
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), "", ""))
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ctl_run("delete_vhost", name)


def _redis(host: str, port: int, *commands: tuple[str, ...]) -> list[bytes]:
    """Replies (first line) of a few commands on one connection: enough for SELECT/SET/FLUSHDB."""
    replies = []
    with socket.create_connection((host, port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for command in commands:
            parts = [f"*{len(command)}\r\n".encode()]
            for arg in command:
                parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
            sock.sendall(b"".join(parts))
            line = reader.readline().rstrip(b"\r\n")
            if line.startswith(b"$") and line != b"$-1":
                line = reader.readline().rstrip(b"\r\n")
            replies.append(line)
    return replies


@contextlib.contextmanager
def redis_database(base_url: str) -> Iterator[str]:
    """A Redis database index (1-15) claimed for this session and flushed at the end; the base
    URL when every index is taken or the server wants a password."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.password:
        yield base_url
        return
    claim = ("SET", "opsc-test-claim", str(os.getpid()), "NX", "EX", "86400")
    for index in range(1, 16):
        _, claimed = _redis(host, port, ("SELECT", str(index)), claim)
        if claimed == b"+OK":
            break
    else:
        yield base_url
        return
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{index}", "", ""))
    finally:
        with contextlib.suppress(OSError):
            _redis(host, port, ("SELECT", str(index)), ("FLUSHDB",))


@pytest.fixture(scope="session")
def dapr_brokers() -> Iterator[dict[str, str]]:
    """Broker URLs of this session's own namespaces (a RabbitMQ vhost, a Redis database), for
    the brokers that are configured and reachable; require_dapr() judges the rest."""
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for broker, env_var in BROKER_ENV.items():
            base = os.environ.get(env_var)
            if base and reachable(base, BROKER_PORT[broker]):
                namespace = rabbitmq_vhost if broker == "rabbitmq" else redis_database
                urls[broker] = stack.enter_context(namespace(base))
        yield urls
