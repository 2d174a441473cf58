"""`tilt up` without a cluster: Dapr mode on this machine, one Tilt resource per process group.

The Tiltfile runs this script once per resource; every command line (daprd flags, uvicorn
arguments, the apps' environment) comes from opsconductor_platform.dapr_mode, the code behind
`opsconductor up --runtime dapr`, so both start the platform the same way:

    python tilt/local.py apps             the hosted apps, as JSON (the Tiltfile makes resources)
    python tilt/local.py sentry           servers checked, databases, run files, Sentry; stays up
    python tilt/local.py app <app-id>     the app beside its own daprd; stays up
    python tilt/local.py smoke            one request through the gateway and two sidecars

Settings come from the environment, with the defaults and variables of `opsconductor up`:
OPSC_DATA_DIR (.data), OPSC_POSTGRES_URL, OPSC_RABBITMQ_URL, OPSC_REDIS_URL,
OPSC_DATABASE_PREFIX, OPSC_LOG_LEVEL, OPSC_DAPR_LOG_LEVEL; and OPSC_TILT_PUBSUB (rabbitmq),
OPSC_TILT_HOST (127.0.0.1), OPSC_TILT_PORT (8080, the gateway), OPSC_TILT_SENTRY_PORT (50001:
the sidecars, started by separate resources, must find the one Sentry).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ready_file(data_dir: Path, name: str) -> Path:
    """Holds the pid of a resource that is up, removed when it stops: the Tiltfile's readiness
    probe reads it (the Tiltfile builds the same path)."""
    return data_dir / "dapr" / "tilt" / f"{name}.ready"


def _data_dir() -> Path:
    path = Path(os.environ.get("OPSC_DATA_DIR", ".data")).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def _options() -> Any:
    from opsconductor_platform.dapr_mode import DaprModeOptions
    from opsconductor_platform.dapr_setup import (
        DEFAULT_DATABASE_PREFIX,
        DEFAULT_POSTGRES_URL,
        DEFAULT_RABBITMQ_URL,
        DEFAULT_REDIS_URL,
        PubSub,
        Servers,
    )
    from opsconductor_platform.hosting import prepare_data_dir

    env = os.environ
    servers = Servers(postgres_url=env.get("OPSC_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                      rabbitmq_url=env.get("OPSC_RABBITMQ_URL", DEFAULT_RABBITMQ_URL),
                      redis_url=env.get("OPSC_REDIS_URL", DEFAULT_REDIS_URL),
                      database_prefix=env.get("OPSC_DATABASE_PREFIX", DEFAULT_DATABASE_PREFIX))
    return DaprModeOptions(
        host=env.get("OPSC_TILT_HOST", "127.0.0.1"), port=int(env.get("OPSC_TILT_PORT", "8080")),
        data_dir=prepare_data_dir(_data_dir()), pubsub=PubSub(env.get("OPSC_TILT_PUBSUB",
                                                                      "rabbitmq")),
        servers=servers, log_level=env.get("OPSC_LOG_LEVEL", "INFO"),
        sidecar_log_level=env.get("OPSC_DAPR_LOG_LEVEL", "warn"),
        # One Sentry for sidecars started by separate processes: a known port, not a free one.
        sentry_port=int(env.get("OPSC_TILT_SENTRY_PORT", "50001")))


def _platform() -> Any:
    from opsconductor_core.logging import configure_logging
    from opsconductor_platform.dapr_mode import DaprPlatform
    from opsconductor_platform.dapr_setup import RunFiles

    options = _options()
    configure_logging(options.log_level)
    platform = DaprPlatform(options)
    platform.files = RunFiles(options.data_dir / "dapr")
    return platform


async def _serve(name: str, start: Any, platform: Any) -> int:
    """Starts, marks `name` ready, runs until SIGTERM/SIGINT (Tilt stopping or restarting the
    resource) or until a child keeps ending (one that ends is restarted with backoff); then
    stops every child this process started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = _ready_file(platform.options.data_dir, name)
    ready.unlink(missing_ok=True)
    code = 1
    try:
        starting = asyncio.ensure_future(start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return 0
        stopping.cancel()
        starting.result()
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(str(os.getpid()))
        print(f"{name} is up", flush=True)
        code = await platform.watch(stop)
    except Exception as exc:
        print(f"{name} could not start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        ready.unlink(missing_ok=True)
        await platform.stop()
    return code


def sentry() -> int:
    platform = _platform()
    # Sentry, the databases, the run files under <data dir>/dapr and the state store's tables:
    # what every sidecar needs before the app resources start.
    return asyncio.run(_serve("sentry", platform.prepare, platform))


def app(app_id: str) -> int:
    from opsconductor_platform.hosting import HOSTED_APPS

    hosted = next((a for a in HOSTED_APPS if a.app_id == app_id), None)
    if hosted is None:
        print(f"unknown app-id {app_id!r}", file=sys.stderr)
        return 2
    platform = _platform()

    async def start() -> None:
        await platform.start_app(hosted)

    return asyncio.run(_serve(app_id, start, platform))


def apps() -> int:
    from opsconductor_platform.hosting import HOSTED_APPS

    listed = []
    for hosted in HOSTED_APPS:
        spec = importlib.util.find_spec(hosted.package)
        assert spec is not None and spec.origin is not None, hosted.package
        app_dir = Path(spec.origin).resolve().parents[1]
        listed.append({"app_id": hosted.app_id, "package": hosted.package,
                       "dir": str(app_dir.relative_to(REPO_ROOT))})
    print(json.dumps(listed))
    return 0


def smoke() -> int:
    """The gateway answers, and a call it forwards (gateway sidecar -> auth sidecar, mTLS and
    access control) returns auth's public keys."""
    base = f"http://127.0.0.1:{os.environ.get('OPSC_TILT_PORT', '8080')}"
    for path in ("/healthz", "/api/v1/auth/jwks"):
        with urllib.request.urlopen(base + path, timeout=30) as response:  # noqa: S310 (http only)
            body = response.read()
            print(f"GET {path}: {response.status}", flush=True)
    keys = json.loads(body).get("keys")
    if not keys:
        print("the JWKS has no keys", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    commands = {"sentry": (sentry, 0), "smoke": (smoke, 0), "apps": (apps, 0), "app": (app, 1)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    command, _ = commands[argv[0]]
    return int(command(*argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
