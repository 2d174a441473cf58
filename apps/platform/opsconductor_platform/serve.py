"""Serving embedded mode with uvicorn; Ctrl-C stops the server, then every app, cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Generator
from pathlib import Path

import uvicorn

from opsconductor_platform.hosting import embedded_platform


class PlatformServer(uvicorn.Server):
    """Uvicorn re-raises the stop signal after shutdown, which would cut short the apps'
    own shutdown that follows; here the signal only asks the server to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stop_signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def serve_embedded(host: str, port: int, data_dir: Path) -> None:
    async with embedded_platform(data_dir) as gateway:
        config = uvicorn.Config(gateway, host=host, port=port, lifespan="off", log_config=None,
                                access_log=False, server_header=False, proxy_headers=False)
        server = PlatformServer(config)
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.05)
        if server.started:
            # What start-up built (apps, routes, models, caches) lives as long as the process:
            # out of the collector's sight, so a full collection does not walk it mid-request.
            gc.collect()
            gc.freeze()
            display_host = f"[{host}]" if ":" in host else host
            print(f"OpsConductor is up: http://{display_host}:{port}  (Ctrl-C stops it)",
                  flush=True)
        await serving
    print("OpsConductor stopped.", flush=True)
