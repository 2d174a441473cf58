"""Shared call handling: a non-2xx answer from another service becomes a typed error."""

from __future__ import annotations

from typing import Any

from opsconductor_core.context import outgoing_headers
from opsconductor_core.problems import ServiceUnavailable
from opsconductor_runtime.interface import AppUnavailable, InvokeResponse, Runtime


class ServiceClient:
    app_id: str

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def call(self, method: str, path: str, *, json_body: Any = None,
                   headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> InvokeResponse:
        merged = outgoing_headers() | (headers or {})
        try:
            return await self.runtime.invoke(self.app_id, method, path, json_body=json_body,
                                             headers=merged, params=params)
        except AppUnavailable as exc:
            raise ServiceUnavailable(f"The {self.app_id} service is unavailable") from exc
