"""The Dapr tier: real daprd sidecars with the project's own Configuration (dapr/config.yaml),
components and resiliency, a Sentry for their mTLS identities, and real brokers.

`dapr_run` gives a prepared run (servers checked, databases, run files, Sentry) to which a test
adds the sidecars and apps it needs; everything is stopped and the databases dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opsconductor_platform.dapr_mode import DaprModeOptions, DaprPlatform, Sidecar
from opsconductor_platform.dapr_setup import PubSub, Servers, free_port
from opsconductor_platform.hosting import SECRET_FACTORIES
from opsconductor_runtime.dapr import DaprRuntime
from opsconductor_runtime.embedded.secrets import ensure_secret_file
from opsconductor_testing.dapr import dapr_brokers, database_prefix, require_dapr
from opsconductor_testing.postgres import drop_databases_with_prefix

__all__ = ["dapr_brokers"]

MakeRun = Callable[..., Awaitable[DaprPlatform]]


@pytest.fixture
async def dapr_run(tmp_path: Path, dapr_brokers: dict[str, str]) -> AsyncIterator[MakeRun]:
    runs: list[DaprPlatform] = []

    async def make(pubsub: str = "rabbitmq", *, prepare: bool = True,
                   **options: Any) -> DaprPlatform:
        """A run on `pubsub`; `options` override DaprModeOptions fields; prepare=False leaves
        the servers, databases, run files and Sentry to the test."""
        env = require_dapr(pubsub, dapr_brokers)
        servers = Servers(postgres_url=env["OPSC_POSTGRES_URL"],
                          rabbitmq_url=env.get("OPSC_RABBITMQ_URL", Servers.rabbitmq_url),
                          redis_url=env.get("OPSC_REDIS_URL", Servers.redis_url),
                          database_prefix=database_prefix("dapr"))
        data_dir = tmp_path / f"data-{len(runs)}"
        data_dir.mkdir(mode=0o700)
        ensure_secret_file(data_dir / "secrets.json", SECRET_FACTORIES)
        run = DaprPlatform(DaprModeOptions(**{
            "host": "127.0.0.1", "port": 0, "data_dir": data_dir, "pubsub": PubSub(pubsub),
            "servers": servers, "start_timeout_s": 120.0, **options}))
        runs.append(run)
        if prepare:
            await run.prepare()
        return run

    try:
        yield make
    finally:
        for run in runs:
            await run.stop()
            drop_databases_with_prefix(run.options.servers.admin_url(),
                                       run.options.servers.database_prefix)


@contextlib.contextmanager
def sdk_pointed_at(sidecar: Sidecar) -> Iterator[None]:
    """The dapr SDK reads its sidecar's address and token from process-wide settings (the
    environment of a real app process); a test talking to several sidecars points it at one."""
    from dapr.conf import settings

    wanted: dict[str, Any] = {
        "DAPR_RUNTIME_HOST": "127.0.0.1", "DAPR_HTTP_ENDPOINT": None, "DAPR_GRPC_ENDPOINT": None,
        "DAPR_HTTP_PORT": sidecar.ports.http, "DAPR_GRPC_PORT": sidecar.ports.grpc,
        "DAPR_API_TOKEN": sidecar.dapr_token, "DAPR_HEALTH_TIMEOUT": 30,
    }
    saved = {name: getattr(settings, name) for name in wanted}
    for name, value in wanted.items():
        setattr(settings, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)


class InProcessApp:
    """An ASGI app served by uvicorn on a loopback port inside the test's event loop."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off"))
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessApp:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


@contextlib.asynccontextmanager
async def gateway_calling_users_echo(run: DaprPlatform) -> AsyncIterator[tuple[DaprRuntime,
                                                                                Sidecar]]:
    """The gateway's runtime, through its own sidecar, and a users sidecar in front of
    `echo_app`; both sidecars healthy."""
    async with InProcessApp(echo_app()) as app:
        users = await run.start_sidecar("users", app_port=app.port)
        gateway = await run.start_sidecar("gateway")
        await run.wait_healthy(users, app.port)
        await run.wait_healthy(gateway)
        with sdk_pointed_at(gateway):
            runtime = DaprRuntime("gateway")
            try:
                yield runtime, gateway
            finally:
                await runtime.close()


def echo_app() -> Starlette:
    """Answers with what reached it; /users/teapot answers like a service refusing politely."""

    async def echo(request: Request) -> Response:
        if request.url.path == "/users/teapot":
            return JSONResponse({"type": "about:blank", "title": "Teapot", "status": 418},
                                status_code=418, media_type="application/problem+json",
                                headers={"Retry-After": "7", "X-Echo": "kept"})
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        return JSONResponse({
            "method": request.method, "path": request.url.path, "raw_path": raw,
            "query": list(request.query_params.multi_items()),
            # First value of each header, as request.headers.get() reads it (the sidecar adds
            # its own X-Forwarded-For after the caller's).
            "headers": {k: request.headers.get(k) for k in request.headers},
            "body": (await request.body()).decode(),
        })

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", echo, methods=methods)])


def received(response_body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(response_body)
    return value
