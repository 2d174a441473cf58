"""Dapr mode on one machine: every hosted app in its own uvicorn process beside its own daprd.

`opsconductor up --runtime dapr --pubsub rabbitmq|redis` starts Sentry (the mTLS authority the
sidecars' access control relies on), then for each app in hosting.HOSTED_APPS a daprd and
`uvicorn --factory <package>.main:create_app`, the gateway last on the public address. Everything
else listens on 127.0.0.1 only. Ctrl-C (or SIGTERM) stops the apps first, then the sidecars, then
Sentry. Children die with this process even when it is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import inspect
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from opsconductor_platform.dapr_setup import (
    STATE_DATABASE,
    PubSub,
    RunFiles,
    Servers,
    SetupError,
    check_servers,
    dapr_dir,
    ensure_databases,
    find_binary,
    free_port,
    prepare_run_files,
    state_store_is_new,
)
from opsconductor_platform.hosting import HOSTED_APPS, HostedApp, components_dir, prepare_data_dir

log = logging.getLogger("opsconductor.platform.dapr")
# Start-up polls every process's health a few times a second: not worth a log line each.
logging.getLogger("httpx").setLevel(logging.WARNING)

GATEWAY = "gateway"
_PR_SET_PDEATHSIG = 1


class StartupFailed(Exception):
    pass


@dataclass(frozen=True)
class DaprModeOptions:
    host: str
    port: int
    data_dir: Path
    pubsub: PubSub
    servers: Servers = field(default_factory=Servers)
    log_level: str = "INFO"
    sidecar_log_level: str = "warn"
    start_timeout_s: float = 180.0


@dataclass(frozen=True)
class SidecarPorts:
    app: int
    http: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    internal_grpc: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    public: int = field(default_factory=free_port)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Runs in the child before exec: the kernel kills it if this process dies (even by
    SIGKILL), so a crashed platform never leaves sidecars holding its ports."""

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return setup


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process

    @property
    def running(self) -> bool:
        return self.process.returncode is None


@dataclass
class Sidecar:
    app_id: str
    ports: SidecarPorts
    # What the app presents to its sidecar, and what the sidecar presents to the app.
    dapr_token: str
    app_token: str | None
    child: Child


def _loopback(host: str) -> str:
    """The address a sidecar uses to reach an app listening on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "localhost", "") else host


def _env_prefix(hosted: HostedApp) -> str:
    config = hosted.module("config")
    return str(config.Settings.model_config.get("env_prefix") or f"OPSC_{hosted.app_id.upper()}_")


class DaprPlatform:
    def __init__(self, options: DaprModeOptions) -> None:
        self.options = options
        self.children: list[Child] = []
        self.daprd = find_binary("daprd", "OPSC_DAPRD", "current")
        self.sentry = find_binary("sentry", "OPSC_DAPR_SENTRY", "sentry")
        self.sentry_port = free_port()
        self.sidecars: dict[str, Sidecar] = {}
        self.files: RunFiles | None = None

    # -- processes ---------------------------------------------------------------------------
    async def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()))
        child = Child(name, process)
        self.children.append(child)
        return child

    def _base_sidecar_env(self) -> dict[str, str]:
        # A minimal environment: components may read variables by name (envRef), so the
        # sidecar sees only what it needs, not the admin password or the apps' settings.
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TZ", "SSL_CERT_FILE",
                                          "SSL_CERT_DIR") if k in os.environ}
        assert self.files is not None
        env.update({
            "DAPR_HOST_IP": "127.0.0.1",
            "NAMESPACE": "default",
            "DAPR_TRUST_ANCHORS": self.files.trust_anchors.read_text(),
            "OPSC_DAPR_NAME_RESOLUTION_DB": str(self.files.name_resolution_db),
            "OPSC_DAPR_SECRETS_FILE": str(self.options.data_dir / "secrets.json"),
            "OPSC_DAPR_PLATFORM_SECRETS_FILE": str(self.files.platform_secrets),
        })
        return env

    async def _start_sentry(self) -> None:
        assert self.files is not None
        if not self.files.trust_anchors.exists():
            # First start: Sentry creates the CA, then reloads itself several times as it sees
            # its own files appear. Let it do that once on its own, then start it for real.
            first = await self._launch_sentry()
            await _terminate([first], timeout_s=10.0)
            self.children.remove(first)
        await self._launch_sentry()

    async def _launch_sentry(self) -> Child:
        assert self.files is not None
        argv = [str(self.sentry), "--config", str(dapr_dir() / "sentry.yaml"),
                "--issuer-credentials", str(self.files.certs), "--trust-domain", "localhost",
                "--port", str(self.sentry_port), "--listen-address", "127.0.0.1",
                "--healthz-port", str(free_port()), "--enable-metrics=false",
                "--log-level", self.options.sidecar_log_level, "--log-as-json"]
        env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        child = await self._spawn("sentry", argv, env)
        await self._until(lambda: self._port_open(self.sentry_port)
                          and self.files is not None and self.files.trust_anchors.exists(),
                          [child], "sentry")
        return child

    async def start_sidecar(self, app_id: str, *, app_port: int | None = None,
                            app_host: str = "127.0.0.1", app_token: str | None = None,
                            ports: SidecarPorts | None = None) -> Sidecar:
        """A daprd for `app_id` (alone when `app_port` is None), sharing this run's Sentry,
        Configuration, resources and name resolution."""
        assert self.files is not None
        ports = ports or SidecarPorts(app=app_port or 0)
        dapr_token = secrets.token_urlsafe(32)
        env = self._base_sidecar_env() | {"DAPR_API_TOKEN": dapr_token}
        if app_token:
            env["APP_API_TOKEN"] = app_token
        argv = [str(self.daprd), "--app-id", app_id, "--mode", "standalone"]
        if app_port:
            argv += ["--app-port", str(app_port), "--app-protocol", "http",
                     "--app-channel-address", _loopback(app_host),
                     "--enable-app-health-check", "--app-health-check-path", "/healthz",
                     "--app-health-probe-interval", "3", "--app-health-threshold", "3"]
        argv += [
            "--dapr-http-port", str(ports.http), "--dapr-grpc-port", str(ports.grpc),
            "--dapr-listen-addresses", "127.0.0.1",
            "--dapr-internal-grpc-port", str(ports.internal_grpc),
            "--dapr-internal-grpc-listen-address", "127.0.0.1",
            "--dapr-public-port", str(ports.public), "--dapr-public-listen-address", "127.0.0.1",
            "--metrics-port", str(ports.metrics), "--metrics-listen-address", "127.0.0.1",
            "--resources-path", str(self.files.resources),
            "--config", str(dapr_dir() / "config.yaml"),
            "--enable-mtls", "--sentry-address", f"127.0.0.1:{self.sentry_port}",
            "--dapr-graceful-shutdown-seconds", "5",
            "--log-level", self.options.sidecar_log_level, "--log-as-json",
        ]
        child = await self._spawn(f"{app_id} sidecar", argv, env)
        return Sidecar(app_id, ports, dapr_token, app_token, child)

    def app_env(self, hosted: HostedApp, sidecar: Sidecar) -> dict[str, str]:
        """The environment of an app process: the shared settings plus its sidecar's address,
        tokens and (with a database) its PostgreSQL database."""
        env = dict(os.environ)
        for name in ("DAPR_HTTP_ENDPOINT", "DAPR_GRPC_ENDPOINT", "APP_API_TOKEN"):
            env.pop(name, None)
        env.update({
            "OPSC_RUNTIME": "dapr", "DAPR_RUNTIME_HOST": "127.0.0.1",
            "DAPR_HTTP_PORT": str(sidecar.ports.http), "DAPR_GRPC_PORT": str(sidecar.ports.grpc),
            "DAPR_API_TOKEN": sidecar.dapr_token,
        })
        if sidecar.app_token:
            env["APP_API_TOKEN"] = sidecar.app_token
        if hosted.has_database:
            env[f"{_env_prefix(hosted)}DATABASE_URL"] = self.options.servers.database_url(
                hosted.app_id, driver="postgresql+asyncpg")
        if hosted.app_id == GATEWAY:
            env.setdefault("OPSC_GATEWAY_SERVICES", json.dumps(
                [a.app_id for a in HOSTED_APPS if a.app_id != GATEWAY]))
        return env

    async def start_app(self, hosted: HostedApp) -> list[Child]:
        opts = self.options
        public = hosted.app_id == GATEWAY
        host = opts.host if public else "127.0.0.1"
        app_port = opts.port if public else free_port()
        # Every app gets an app token. The gateway is also the public edge: it requires the token
        # only on the routes its sidecar calls (event deliveries), never on browser traffic.
        sidecar = await self.start_sidecar(hosted.app_id, app_port=app_port, app_host=host,
                                           app_token=secrets.token_urlsafe(32))
        self.sidecars[hosted.app_id] = sidecar
        assert self.files is not None
        uvicorn = [
            sys.executable, "-m", "uvicorn", "--factory", f"{hosted.package}.main:create_app",
            "--host", host, "--port", str(app_port), "--lifespan", "on",
            "--log-config", str(self.files.log_config(hosted.app_id)), "--no-access-log",
            "--no-proxy-headers", "--no-server-header", "--timeout-graceful-shutdown", "10",
        ]
        app = await self._spawn(hosted.app_id, uvicorn, self.app_env(hosted, sidecar))
        return [sidecar.child, app]

    # -- waiting -----------------------------------------------------------------------------
    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    async def _until(self, ready: Callable[[], bool | Awaitable[bool]], watched: list[Child],
                     what: str) -> None:
        deadline = asyncio.get_running_loop().time() + self.options.start_timeout_s
        while True:
            result = ready()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            for child in watched:
                if not child.running:
                    raise StartupFailed(f"{child.name} exited (code {child.process.returncode}) "
                                        f"while {what} was starting")
            if asyncio.get_running_loop().time() > deadline:
                raise StartupFailed(f"{what} did not start within {self.options.start_timeout_s}s")
            await asyncio.sleep(0.2)

    async def wait_healthy(self, sidecar: Sidecar, app_port: int | None = None,
                           watched: list[Child] | None = None) -> None:
        """Until the sidecar (and the app behind it, if any) answers its health check."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            async def healthy() -> bool:
                try:
                    sidecar_ok = (await client.get(
                        f"http://127.0.0.1:{sidecar.ports.public}/v1.0/healthz")).status_code
                    if sidecar_ok != 204:
                        return False
                    if app_port:
                        app_ok = await client.get(f"http://127.0.0.1:{app_port}/healthz")
                        return app_ok.status_code == 200
                except httpx.HTTPError:
                    return False
                return True

            await self._until(healthy, watched or [sidecar.child], sidecar.app_id)

    # -- lifecycle ---------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Servers checked, databases created, run files written, Sentry running."""
        opts = self.options
        await check_servers(opts.servers, opts.pubsub)
        await ensure_databases(opts.servers, [a.app_id for a in HOSTED_APPS if a.has_database]
                               + [STATE_DATABASE])
        self.files = prepare_run_files(opts.data_dir, opts.servers, HOSTED_APPS, opts.log_level,
                                       components_dir(), opts.pubsub)
        await self._start_sentry()
        if await state_store_is_new(opts.servers):
            # Sidecars that find the state store empty all create its tables, and PostgreSQL
            # fails all but one of them ("type dapr_metadata already exists"): one goes first.
            first = await self.start_sidecar(HOSTED_APPS[0].app_id)
            await self.wait_healthy(first)
            await _terminate([first.child], timeout_s=15.0)
            self.children.remove(first.child)

    async def start(self) -> None:
        await self.prepare()
        backend = [a for a in HOSTED_APPS if a.app_id != GATEWAY]
        started = {a.app_id: await self.start_app(a) for a in backend}
        await asyncio.gather(*(self.wait_healthy(self.sidecars[app_id],
                                                 self.sidecars[app_id].ports.app, children)
                               for app_id, children in started.items()))
        for edge in (a for a in HOSTED_APPS if a.app_id == GATEWAY):
            children = await self.start_app(edge)
            await self.wait_healthy(self.sidecars[edge.app_id],
                                    self.sidecars[edge.app_id].ports.app, children)

    async def watch(self, stop: asyncio.Event) -> int:
        """Until asked to stop (0) or a process ends on its own (1)."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children}
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        for future in [stopper, *waits]:
            if future not in done:
                future.cancel()
        ended = [waits[f] for f in done if f in waits]
        for child in ended:
            print(f"OpsConductor: {child.name} stopped unexpectedly (exit code "
                  f"{child.process.returncode}); stopping everything.", file=sys.stderr,
                  flush=True)
        return 1 if ended else 0

    async def stop(self) -> None:
        apps = [c for c in self.children if not c.name.endswith(" sidecar") and c.name != "sentry"]
        sidecars = [c for c in self.children if c.name.endswith(" sidecar")]
        sentry = [c for c in self.children if c.name == "sentry"]
        edge = [c for c in apps if c.name == GATEWAY]
        backend = [c for c in apps if c.name != GATEWAY]
        # Outside in: no new requests, then the apps (their relays stop publishing), then the
        # sidecars they talk through, then the authority the sidecars' certificates come from.
        for tier in (edge, backend, sidecars, sentry):
            await _terminate(tier, timeout_s=15.0)


async def _terminate(children: list[Child], timeout_s: float) -> None:
    running = [c for c in children if c.running]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    if not running:
        return
    _, pending = await asyncio.wait([asyncio.ensure_future(c.process.wait()) for c in running],
                                    timeout=timeout_s)
    for child in running:
        if child.running:
            log.warning("process did not stop in time; killing it", extra={"process": child.name})
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
    for future in pending:
        future.cancel()


async def serve_dapr(options: DaprModeOptions) -> int:
    """Runs until Ctrl-C; the exit code says whether everything stopped as asked."""
    options = dataclasses.replace(options, data_dir=prepare_data_dir(options.data_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        platform = DaprPlatform(options)
    except SetupError as exc:
        print(f"OpsConductor (dapr mode): {exc}", file=sys.stderr, flush=True)
        return 2
    code = 0
    try:
        starting = asyncio.ensure_future(platform.start())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        else:
            stopper.cancel()
            starting.result()
            display = f"[{options.host}]" if ":" in options.host else options.host
            print(f"OpsConductor is up: http://{display}:{options.port}  (Dapr mode, pub/sub on "
                  f"{options.pubsub.value}; Ctrl-C stops it)", flush=True)
            code = await platform.watch(stop)
    except (SetupError, StartupFailed) as exc:
        print(f"OpsConductor (dapr mode) could not start: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        await platform.stop()
    print("OpsConductor stopped.", flush=True)
    return code
