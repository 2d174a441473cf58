"""/healthz and /readyz for the whole deployment: every fronted service probed concurrently."""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse

from opsconductor_core.context import outgoing_headers
from opsconductor_runtime.interface import Runtime


class ServiceProbes:
    def __init__(self, runtime: Runtime, services: list[str], timeout_s: float) -> None:
        self.runtime = runtime
        self.services = services
        self.timeout_s = timeout_s

    async def _probe(self, app_id: str, path: str) -> str:
        try:
            # wait_for bounds adapters that do not honour timeout_s themselves.
            response = await asyncio.wait_for(
                self.runtime.invoke(app_id, "GET", path, headers=outgoing_headers(),
                                    timeout_s=self.timeout_s),
                self.timeout_s)
        except Exception:
            return "unavailable"
        return "ok" if response.ok else "unavailable"

    async def states(self, path: str) -> dict[str, str]:
        results = await asyncio.gather(*(self._probe(s, path) for s in self.services))
        return dict(zip(self.services, results, strict=True))

    async def healthz(self) -> JSONResponse:
        services = await self.states("/healthz")
        healthy = all(state == "ok" for state in services.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", "services": services},
                            status_code=200 if healthy else 503)

    async def readyz(self) -> JSONResponse:
        services = await self.states("/readyz")
        ready = all(state == "ok" for state in services.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "services": services},
                            status_code=200 if ready else 503)
