"""What Dapr mode needs before anything starts: the binaries, the servers, the databases, ports and
the files the sidecars read (platform secrets, name-resolution registry, resources, logging)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from opsconductor_platform.hosting import REPO_ROOT, HostedApp
from opsconductor_runtime.embedded.secrets import write_secret_file

DEFAULT_POSTGRES_URL = "postgresql://opsc:opsc@127.0.0.1:5432"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_PREFIX = "opsconductor_"
STATE_DATABASE = "state"

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PubSub(StrEnum):
    rabbitmq = "rabbitmq"
    redis = "redis"


class SetupError(Exception):
    """Something Dapr mode needs is missing; the message says how to fix it."""


def dapr_dir() -> Path:
    """dapr/: config.yaml, resiliency.yaml, sentry.yaml (OPSC_DAPR_DIR overrides)."""
    return Path(os.environ.get("OPSC_DAPR_DIR", REPO_ROOT / "dapr"))


def find_binary(name: str, env_var: str, cached: str) -> Path:
    """The binary from `env_var`, the project's build cache, `dapr init --slim`'s folder or PATH."""
    candidates = [os.environ.get(env_var), REPO_ROOT / ".cache" / "daprd" / cached,
                  Path.home() / ".dapr" / "bin" / name, shutil.which(name)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    raise SetupError(f"{name} not found: run scripts/build-daprd.sh and scripts/build-sentry.sh "
                     f"(or `dapr init --slim`), or set {env_var}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Servers:
    """Where the platform's servers are (loopback by default; every URL is configurable)."""

    postgres_url: str = DEFAULT_POSTGRES_URL
    rabbitmq_url: str = DEFAULT_RABBITMQ_URL
    redis_url: str = DEFAULT_REDIS_URL
    database_prefix: str = DEFAULT_DATABASE_PREFIX

    def database_name(self, name: str) -> str:
        full = f"{self.database_prefix}{name}"
        if not _DB_NAME.match(full):
            raise SetupError(f"not a usable database name: {full!r} (check the database prefix)")
        return full

    def database_url(self, name: str, driver: str = "postgresql") -> str:
        parts = urlsplit(self.postgres_url)
        scheme = driver
        return urlunsplit((scheme, parts.netloc, "/" + self.database_name(name), parts.query, ""))

    def admin_url(self) -> str:
        parts = urlsplit(self.postgres_url)
        return urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


async def _reachable(url: str, default_port: int) -> bool:
    host, port = _endpoint(url, default_port)
    try:
        async with asyncio.timeout(3):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def check_servers(servers: Servers, pubsub: PubSub) -> None:
    checks = [("PostgreSQL", servers.postgres_url, 5432, "postgres")]
    if pubsub is PubSub.rabbitmq:
        checks.append(("RabbitMQ", servers.rabbitmq_url, 5672, "rabbitmq"))
    else:
        checks.append(("Redis", servers.redis_url, 6379, "redis"))
    for label, url, port, service in checks:
        if not await _reachable(url, port):
            host, real_port = _endpoint(url, port)
            raise SetupError(f"{label} is not reachable at {host}:{real_port}; start it "
                             f"(scripts/services.sh install {service} && "
                             f"scripts/services.sh start {service}) or pass its URL")


async def state_store_is_new(servers: Servers) -> bool:
    """True while the state store's database holds no table yet (no sidecar has set it up)."""
    conn = await asyncpg.connect(servers.database_url(STATE_DATABASE), timeout=10)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
    finally:
        await conn.close()
    return not tables


async def ensure_databases(servers: Servers, names: list[str]) -> None:
    """One database per service plus the state store's; created when missing."""
    try:
        conn = await asyncpg.connect(servers.admin_url(), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SetupError(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        for name in names:
            database = servers.database_name(name)
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def platform_secrets(servers: Servers) -> dict[str, str]:
    """Connection details the components take through secretKeyRef (components/*.yaml)."""
    redis = urlsplit(servers.redis_url)
    redis_db = (redis.path or "/0").lstrip("/") or "0"
    return {
        "statestore-connection": servers.database_url(STATE_DATABASE),
        "rabbitmq-url": servers.rabbitmq_url,
        "redis-host": f"{redis.hostname or '127.0.0.1'}:{redis.port or 6379}",
        "redis-username": unquote(redis.username or ""),
        "redis-password": unquote(redis.password or ""),
        "redis-db": redis_db,
    }


@dataclass(frozen=True)
class RunFiles:
    """Files of one `up --runtime dapr`, under <data dir>/dapr (owner-only)."""

    root: Path

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def trust_anchors(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def resources(self) -> Path:
        return self.root / "resources"

    @property
    def platform_secrets(self) -> Path:
        return self.root / "platform-secrets.json"

    @property
    def name_resolution_db(self) -> Path:
        return self.root / "name-resolution.db"

    def log_config(self, app_id: str) -> Path:
        return self.root / f"logging-{app_id}.json"


def stage_resources(target: Path, components: Path, pubsub: PubSub) -> None:
    """One flat resources folder for every sidecar, of links into the repository: the shared
    components (top level of components/), the chosen broker's folder (`pubsub`, which apps
    subscribe through, and `pubsub-publisher`, which they publish through), and the resiliency
    policy.
    (Pointing daprd at components/ itself works too, but it warns about every subfolder.)"""
    for old in target.iterdir():
        old.unlink()
    chosen = components / f"pubsub-{pubsub.value}"
    if not (chosen / "pubsub.yaml").is_file():
        raise SetupError(f"missing {chosen / 'pubsub.yaml'}")
    sources = [*sorted(components.glob("*.yaml")), *sorted(chosen.glob("*.yaml")),
               dapr_dir() / "resiliency.yaml"]
    for source in sources:
        (target / source.name).symlink_to(source.resolve())


def prepare_run_files(data_dir: Path, servers: Servers, apps: tuple[HostedApp, ...],
                      log_level: str, components: Path, pubsub: PubSub) -> RunFiles:
    files = RunFiles(data_dir / "dapr")
    files.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.certs.mkdir(mode=0o700, exist_ok=True)
    files.resources.mkdir(mode=0o700, exist_ok=True)
    # Registrations of an earlier run point at ports nobody listens on any more.
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{files.name_resolution_db}{suffix}").unlink(missing_ok=True)
    write_secret_file(files.platform_secrets, platform_secrets(servers))
    stage_resources(files.resources, components, pubsub)
    for hosted in apps:
        files.log_config(hosted.app_id).write_text(json.dumps(_log_config(hosted.app_id, log_level)))
    return files


def _log_config(app_id: str, level: str) -> dict[str, object]:
    """uvicorn --log-config: the platform's JSON lines, each naming the app it came from."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"app": {"()": "opsconductor_platform.dapr_setup.ServiceTag", "app_id": app_id}},
        "formatters": {"json": {"()": "opsconductor_core.logging.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "json", "filters": ["app"]}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"uvicorn.access": {"level": "WARNING"}},
    }


class ServiceTag:
    """Logging filter: every line says which app wrote it (the apps share one terminal)."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id

    def filter(self, record: object) -> bool:
        if not hasattr(record, "service"):
            record.service = self.app_id  # type: ignore[attr-defined]
        return True
