"""Dapr mode on one machine: every hosted app in its own uvicorn process beside its own daprd.

`opsconductor up --runtime dapr --pubsub rabbitmq|redis` starts Sentry (the mTLS authority the
sidecars' access control relies on), then for each app in hosting.HOSTED_APPS a daprd and
`uvicorn --factory <package>.main:create_app`, the gateway last on the public address. Everything
else listens on 127.0.0.1 only. Ctrl-C (or SIGTERM) stops the apps first, then the sidecars, then
Sentry. Children die with this process even when it is killed outright.

Ports: the platform opens each app's listening socket itself and hands it to the app process
(uvicorn --fd), so an app's port is never lost, not even across restarts. daprd and Sentry bind
their own ports, picked free just before; one that exits while starting (another process took a
port in between) is started again on fresh ports, a bounded number of times.

Supervision: a process that ends on its own is restarted with backoff (processes.RestartPolicy);
one that keeps ending stops the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from opsconductor_platform.processes import (
    Child,
    RestartPolicy,
    listen,
    spawn,
    supervise,
    terminate,
)

log = logging.getLogger("opsconductor.platform.dapr")
# Start-up polls every process's health a few times a second: not worth a log line each.
logging.getLogger("httpx").setLevel(logging.WARNING)

GATEWAY = "gateway"
# daprd keeps idle connections to its app for 90 s (Go's default transport). uvicorn's default
# of 5 s closed them first, and a call sent on a connection the app was closing at that moment
# failed and waited for the resiliency retry (3 of 120 calls spaced at the keep-alive time):
# the app keeps them longer than its sidecar does.
APP_KEEP_ALIVE_S = 120
# Every app's uvicorn options, here and in each app's Dockerfile (tests/deploy compares them).
APP_SERVER_OPTIONS = ("--no-access-log", "--no-proxy-headers", "--no-server-header",
                      "--timeout-graceful-shutdown", "10",
                      "--timeout-keep-alive", str(APP_KEEP_ALIVE_S))
SENTRY = "sentry"
SIDECAR_SUFFIX = " sidecar"


class StartupFailed(Exception):
    pass


class ChildExited(StartupFailed):
    def __init__(self, child: Child, what: str) -> None:
        super().__init__(f"{child.name} exited ({child.reason()}) while {what} was starting")
        self.child = child


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
    # Sentry on a known port (sidecars started by other processes must find it); None: any.
    sentry_port: int | None = None
    # A daprd or Sentry that exits while starting is started this many times in all.
    start_attempts: int = 4
    restarts: RestartPolicy = field(default_factory=RestartPolicy)


@dataclass(frozen=True)
class SidecarPorts:
    app: int
    http: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    internal_grpc: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    public: int = field(default_factory=free_port)

    def fresh(self) -> SidecarPorts:
        """New ports for everything the sidecar binds; the app's port stays."""
        return SidecarPorts(app=self.app)


@dataclass(eq=False)
class Sidecar:
    app_id: str
    ports: SidecarPorts
    # What the app presents to its sidecar, and what the sidecar presents to the app.
    dapr_token: str
    app_token: str | None
    child: Child
    app_host: str = "127.0.0.1"


@dataclass(eq=False)
class HostedProcess:
    """One hosted app as a pod would run it: its sidecar, its process, and the listening socket
    the platform keeps for it."""

    hosted: HostedApp
    listener: socket.socket
    sidecar: Sidecar
    child: Child | None = None

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])


def _loopback(host: str) -> str:
    """The address a sidecar uses to reach an app listening on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "localhost", "") else host


def _env_prefix(hosted: HostedApp) -> str:
    config = hosted.module("config")
    return str(config.Settings.model_config.get("env_prefix") or f"OPSC_{hosted.app_id.upper()}_")


async def _first_failure(coroutines: list[Coroutine[Any, Any, Any]]) -> None:
    """Runs them together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class DaprPlatform:
    def __init__(self, options: DaprModeOptions) -> None:
        self.options = options
        self.children: list[Child] = []
        self.daprd = find_binary("daprd", "OPSC_DAPRD", "current")
        self.sentry = find_binary("sentry", "OPSC_DAPR_SENTRY", "sentry")
        self.sentry_port = options.sentry_port or free_port()
        self.sidecars: dict[str, Sidecar] = {}
        self.apps: dict[str, HostedProcess] = {}
        self.files: RunFiles | None = None
        # Listening sockets opened before their app starts (the public one, to fail fast).
        self._reserved: dict[str, socket.socket] = {}

    # -- processes ---------------------------------------------------------------------------
    async def _spawn(self, name: str, argv: list[str], env: dict[str, str], *,
                     pass_fds: tuple[int, ...] = (), capture: bool = False) -> Child:
        child = await spawn(name, argv, env, pass_fds=pass_fds, capture=capture)
        self.children.append(child)
        return child

    async def _retire(self, child: Child | None) -> None:
        """Stops `child` on purpose: it is no longer watched, and nobody restarts it."""
        if child is None:
            return
        with contextlib.suppress(ValueError):
            self.children.remove(child)
        await terminate([child], timeout_s=15.0)

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

    # -- Sentry ------------------------------------------------------------------------------
    async def _start_sentry(self) -> None:
        assert self.files is not None
        if not self.files.trust_anchors.exists():
            # First start: Sentry creates the CA, then reloads itself several times as it sees
            # its own files appear. Let it do that once on its own, then start it for real.
            await self._retire(await self._launch_sentry())
        await self._launch_sentry()

    async def _spawn_sentry(self) -> tuple[Child, int]:
        assert self.files is not None
        healthz = free_port()
        argv = [str(self.sentry), "--config", str(dapr_dir() / "sentry.yaml"),
                "--issuer-credentials", str(self.files.certs), "--trust-domain", "localhost",
                "--port", str(self.sentry_port), "--listen-address", "127.0.0.1",
                "--healthz-port", str(healthz), "--enable-metrics=false",
                "--log-level", self.options.sidecar_log_level, "--log-as-json"]
        env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        return await self._spawn(SENTRY, argv, env, capture=True), healthz

    async def _launch_sentry(self) -> Child:
        attempts = self.options.start_attempts
        attempt = 1
        while True:
            child, healthz = await self._spawn_sentry()
            try:
                await self._until(functools.partial(self._sentry_ready, healthz), [child], SENTRY)
                return child
            except ChildExited as exc:
                with contextlib.suppress(ValueError):
                    self.children.remove(child)
                if attempt == attempts:
                    raise StartupFailed(f"sentry could not start ({attempts} attempts); the "
                                        f"last one ended with {child.reason()}") from exc
            attempt += 1
            if self.options.sentry_port is None:
                self.sentry_port = free_port()
            log.warning("sentry exited while starting; starting it again", extra={
                "process_name": SENTRY, "reason": child.reason(), "attempt": attempt,
                "attempts": attempts, "port": self.sentry_port})

    async def _sentry_ready(self, healthz: int) -> bool:
        if self.files is None or not self.files.trust_anchors.exists():
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                answer = await client.get(f"http://127.0.0.1:{healthz}/healthz")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and self._port_open(self.sentry_port)

    # -- sidecars ----------------------------------------------------------------------------
    async def start_sidecar(self, app_id: str, *, app_port: int | None = None,
                            app_host: str = "127.0.0.1", app_token: str | None = None,
                            ports: SidecarPorts | None = None) -> Sidecar:
        """A daprd for `app_id` (alone when `app_port` is None), sharing this run's Sentry,
        Configuration, resources and name resolution. It is starting: wait_healthy() waits for
        it (and starts it again on fresh ports if it exits meanwhile)."""
        ports = ports or SidecarPorts(app=app_port or 0)
        if app_port:
            ports = dataclasses.replace(ports, app=app_port)
        dapr_token = secrets.token_urlsafe(32)
        child = await self._spawn_sidecar(app_id, ports, dapr_token, app_token, app_host)
        return Sidecar(app_id, ports, dapr_token, app_token, child, app_host)

    async def _spawn_sidecar(self, app_id: str, ports: SidecarPorts, dapr_token: str,
                             app_token: str | None, app_host: str) -> Child:
        assert self.files is not None
        env = self._base_sidecar_env() | {"DAPR_API_TOKEN": dapr_token}
        if app_token:
            env["APP_API_TOKEN"] = app_token
        argv = [str(self.daprd), "--app-id", app_id, "--mode", "standalone"]
        if ports.app:
            argv += ["--app-port", str(ports.app), "--app-protocol", "http",
                     "--app-channel-address", _loopback(app_host),
                     "--enable-app-health-check", "--app-health-check-path", "/healthz",
                     # A busy app answers /healthz late, not never: at daprd's 500 ms default
                     # a burst of load marked apps unhealthy and the sidecar refused all calls.
                     "--app-health-probe-interval", "3", "--app-health-probe-timeout", "2000",
                     "--app-health-threshold", "3"]
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
        return await self._spawn(f"{app_id}{SIDECAR_SUFFIX}", argv, env, capture=True)

    async def respawn_sidecar(self, sidecar: Sidecar, *, fresh_ports: bool) -> None:
        """Starts the sidecar again; on fresh ports its app is restarted too (the app's
        environment names the sidecar's ports)."""
        await self._retire(sidecar.child)
        hosted = self.apps.get(sidecar.app_id)
        app_restarts = fresh_ports and hosted is not None and hosted.sidecar is sidecar
        if app_restarts and hosted is not None:
            await self._retire(hosted.child)
            hosted.child = None
        if fresh_ports:
            sidecar.ports = sidecar.ports.fresh()
        sidecar.child = await self._spawn_sidecar(sidecar.app_id, sidecar.ports, sidecar.dapr_token,
                                                  sidecar.app_token, sidecar.app_host)
        if app_restarts and hosted is not None:
            hosted.child = await self._spawn_app(hosted)

    # -- apps --------------------------------------------------------------------------------
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
        if hosted.app_id == "executor":
            # A stable replica name (as a pod name would be): a restarted executor takes its
            # own executions back at once instead of waiting for their leases to expire.
            data = hashlib.sha256(str(self.options.data_dir).encode()).hexdigest()[:8]
            env.setdefault("OPSC_EXECUTOR_REPLICA_ID",
                           f"{socket.gethostname()[:40]}-executor-{data}")
        return env

    def _listener(self, hosted: HostedApp) -> socket.socket:
        reserved = self._reserved.pop(hosted.app_id, None)
        if reserved is not None:
            return reserved
        if hosted.app_id != GATEWAY:
            return listen("127.0.0.1", 0)
        host, port = self.options.host, self.options.port
        try:
            return listen(host, port)
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise SetupError(f"cannot listen on {shown}:{port}: {exc.strerror or exc} (is "
                             "another program using it? choose another with --port)") from exc

    async def _spawn_app(self, app: HostedProcess) -> Child:
        assert self.files is not None
        fd = app.listener.fileno()
        uvicorn = [
            sys.executable, "-m", "uvicorn", "--factory", f"{app.hosted.package}.main:create_app",
            "--fd", str(fd), "--lifespan", "on",
            "--log-config", str(self.files.log_config(app.hosted.app_id)), *APP_SERVER_OPTIONS,
        ]
        return await self._spawn(app.hosted.app_id, uvicorn,
                                 self.app_env(app.hosted, app.sidecar), pass_fds=(fd,))

    async def start_app(self, hosted: HostedApp) -> HostedProcess:
        """The app and its sidecar, running and healthy."""
        listener = self._listener(hosted)
        try:
            host = self.options.host if hosted.app_id == GATEWAY else "127.0.0.1"
            port = int(listener.getsockname()[1])
            # Every app gets an app token. The gateway is also the public edge: it requires the
            # token only on the routes its sidecar calls (event deliveries), never on browser
            # traffic.
            sidecar = await self.start_sidecar(hosted.app_id, app_port=port, app_host=host,
                                               app_token=secrets.token_urlsafe(32))
        except BaseException:
            listener.close()
            raise
        app = HostedProcess(hosted, listener, sidecar)
        self.sidecars[hosted.app_id] = sidecar
        self.apps[hosted.app_id] = app
        app.child = await self._spawn_app(app)
        await self.wait_healthy(sidecar, app.port)
        return app

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
            # An exited process is a failure even if something else answers on its port.
            for child in watched:
                if not child.running:
                    await asyncio.wait([child.ended], timeout=2.0)  # its last words
                    raise ChildExited(child, what)
            if result:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise StartupFailed(f"{what} did not start within {self.options.start_timeout_s}s")
            await asyncio.sleep(0.2)

    async def wait_healthy(self, sidecar: Sidecar, app_port: int | None = None,
                           watched: list[Child] | None = None) -> None:
        """Until the sidecar (and the app behind it, if any) answers its health check. A sidecar
        that exits meanwhile -- another process took one of its ports after it was picked -- is
        started again on fresh ports (with its app), at most `start_attempts` times in all."""
        attempts = self.options.start_attempts
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

            for attempt in range(1, attempts + 1):
                hosted = self.apps.get(sidecar.app_id)
                app_child = hosted.child if hosted and hosted.sidecar is sidecar else None
                children = [sidecar.child, *([app_child] if app_child else []), *(watched or [])]
                try:
                    await self._until(healthy, children, sidecar.app_id)
                    return
                except ChildExited as exc:
                    if exc.child is not sidecar.child:
                        raise
                    if attempt == attempts:
                        raise StartupFailed(
                            f"{exc.child.name} could not start ({attempts} attempts); the last "
                            f"one ended with {exc.child.reason()}") from exc
                    log.warning("sidecar exited while starting; starting it again on fresh "
                                "ports", extra={"process_name": exc.child.name,
                                                "reason": exc.child.reason(),
                                                "attempt": attempt + 1, "attempts": attempts})
                    await self.respawn_sidecar(sidecar, fresh_ports=True)

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
            await self._retire(first.child)

    async def start(self) -> None:
        # The public address first: a port in use is a mistake to report before anything runs.
        edge = [a for a in HOSTED_APPS if a.app_id == GATEWAY]
        for hosted in edge:
            self._reserved[hosted.app_id] = self._listener(hosted)
        await self.prepare()
        await _first_failure([self.start_app(a) for a in HOSTED_APPS if a.app_id != GATEWAY])
        for hosted in edge:
            await self.start_app(hosted)

    async def _restart(self, child: Child, restart: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        with contextlib.suppress(ValueError):
            self.children.remove(child)
        if child.name == SENTRY:
            # Same port: the running sidecars know Sentry by it.
            await self._spawn_sentry()
            return
        for app_id, hosted in self.apps.items():
            if hosted.child is child:
                hosted.child = await self._spawn_app(hosted)
                log.info("app restarted", extra={"process_name": child.name, "restart": restart})
                return
            if hosted.sidecar.child is child:
                # Its ports again first (the app keeps talking to them); when that did not last
                # either, fresh ones and its app with them.
                await self.respawn_sidecar(hosted.sidecar, fresh_ports=restart > 1)
                log.info("sidecar restarted", extra={"process_name": child.name, "restart": restart,
                                                     "app_id": app_id})
                return
        for sidecar in self.sidecars.values():
            if sidecar.child is child:
                await self.respawn_sidecar(sidecar, fresh_ports=restart > 1)
                return
        raise StartupFailed(f"{child.name} is not a process this platform knows how to restart")

    async def watch(self, stop: asyncio.Event) -> int:
        """Until asked to stop (0), restarting every process that ends on its own with backoff;
        1 when one keeps ending (more than the restart policy allows)."""
        return await supervise(stop, lambda: self.children, self._restart, self.options.restarts)

    async def stop(self) -> None:
        apps = [c for c in self.children if not c.name.endswith(SIDECAR_SUFFIX)
                and c.name != SENTRY]
        sidecars = [c for c in self.children if c.name.endswith(SIDECAR_SUFFIX)]
        sentry = [c for c in self.children if c.name == SENTRY]
        edge = [c for c in apps if c.name == GATEWAY]
        backend = [c for c in apps if c.name != GATEWAY]
        # Outside in: no new requests, then the apps (their relays stop publishing), then the
        # sidecars they talk through, then the authority the sidecars' certificates come from.
        for tier in (edge, backend, sidecars, sentry):
            await terminate(tier, timeout_s=15.0)
        for app in self.apps.values():
            app.listener.close()
        for listener in self._reserved.values():
            listener.close()
        self._reserved.clear()


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
