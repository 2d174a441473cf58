"""Shared call handling: a non-2xx answer from another service becomes a typed error."""

from __future__ import annotations

import logging
from typing import Any

from opsconductor_core.context import outgoing_headers
from opsconductor_core.problems import ServiceUnavailable
from opsconductor_runtime.interface import AppUnavailable, InvokeResponse, Runtime

log = logging.getLogger("opsconductor.clients")


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
            # The caller's client sees only 503; the reason (breaker open, connection lost,
            # app unhealthy) is for the operator, and never holds request data.
            log.warning("service unavailable", extra={"app_id": self.app_id, "reason": str(exc)})
            raise ServiceUnavailable(f"The {self.app_id} service is unavailable") from exc

    def unexpected(self, response: InvokeResponse) -> ServiceUnavailable:
        """The error for an answer this client gives no meaning to, logged with its status (the
        caller's client sees only 503)."""
        log.warning("unexpected answer", extra={"app_id": self.app_id, "status": response.status})
        return ServiceUnavailable(f"The {self.app_id} service answered unexpectedly")


def problem_of(response: InvokeResponse) -> tuple[str | None, dict[str, str] | None]:
    """The `detail` and `errors` of a problem+json answer (None where absent or malformed)."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    detail = body.get("detail")
    errors = body.get("errors")
    return (str(detail)[:1000] if detail else None,
            {str(k)[:200]: str(v)[:500] for k, v in errors.items()}
            if isinstance(errors, dict) and errors else None)
