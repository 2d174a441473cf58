"""Service invocation over the sidecar's HTTP API, on one pooled connection set per runtime.

The SDK's HTTP client (`DaprHttpClient.send_bytes`) opens a new aiohttp session, so a new TCP
connection to the sidecar, for every call, and turns every non-2xx answer into an exception
without the response headers. Under load the first costs a connect, a session and a teardown per
call in the app and in its sidecar, and leaves a TIME_WAIT socket behind each; the second loses
what callers here need (problem+json content type, Retry-After, WWW-Authenticate). This module
sends the same request the SDK would (same URL, token and headers, read from the SDK's settings
at call time) on a long-lived session, hands every answer back, and tells an answer of the
called app from an error of the sidecars (unknown app, access denied by policy, breaker open,
app unhealthy, timeout).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from dapr.clients.http.conf import (
    CONTENT_TYPE_HEADER,
    DAPR_API_TOKEN_HEADER,
    DAPR_USER_AGENT,
    USER_AGENT_HEADER,
)
from dapr.clients.http.helpers import get_api_url
from dapr.conf import settings

from opsconductor_core.loops import PerLoop
from opsconductor_runtime.interface import AppUnavailable, InvokeResponse

CONTENT_TYPE = "Content-Type"
# The SDK's default when a call names no content type.
DEFAULT_CONTENT_TYPE = "application/json; charset=utf-8"
# Connections kept open to the sidecar. Calls beyond this wait for a free one: the queue stays
# in this process instead of becoming ever more sockets against an already busy sidecar.
MAX_CONNECTIONS = 128
# How long an idle pooled connection is kept. daprd's HTTP server sets no idle timeout of its
# own (v1.16 pkg/api/http/server.go), so the pool alone decides: a quiet app gives its sockets
# back after this.
KEEPALIVE_S = 15.0


def lowercase(headers: Any) -> dict[str, str]:
    """Header names as the embedded adapter (httpx) gives them: lower case."""
    return {str(k).lower(): str(v) for k, v in headers.items()}


def sidecar_error(response: InvokeResponse) -> str | None:
    """The sidecar's own error code (ERR_...), or None when the called app produced the answer.

    Dapr answers its own failures with JSON `{"errorCode": "ERR_...", "message": ...}`; an app's
    answer, of any status, is passed through as the app wrote it.
    """
    if response.ok or not response.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = json.loads(response.body)
    except ValueError:
        return None
    code = body.get("errorCode") if isinstance(body, dict) else None
    return code if isinstance(code, str) and code.startswith("ERR_") else None


class Invoker:
    """One per runtime: a pooled aiohttp session to the app's own sidecar, opened on first use
    in the running event loop and closed with the runtime."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session = PerLoop(self._open, usable=lambda session: not session.closed)

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections,
                                         keepalive_timeout=KEEPALIVE_S)
        return aiohttp.ClientSession(connector=connector)

    async def call(self, app_id: str, method: str, path: str, *, body: bytes | None,
                   headers: dict[str, str], params: Any, timeout_s: float) -> InvokeResponse:
        url = f"{get_api_url()}/invoke/{app_id}/method/{path.lstrip('/')}"
        sent = dict(headers)
        if not any(k.lower() == "content-type" for k in sent):
            sent[CONTENT_TYPE_HEADER] = DEFAULT_CONTENT_TYPE
        if settings.DAPR_API_TOKEN:
            sent[DAPR_API_TOKEN_HEADER] = settings.DAPR_API_TOKEN
        sent[USER_AGENT_HEADER] = DAPR_USER_AGENT
        try:
            async with self._session.get().request(
                    method.upper(), url, data=body, headers=sent, params=params,
                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                result = InvokeResponse(response.status, await response.read(),
                                        lowercase(response.headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AppUnavailable(f"{app_id}: sidecar unreachable or too slow: {exc!r}") from exc
        code = sidecar_error(result)
        if code is not None:
            detail = json.loads(result.body).get("message", "")
            raise AppUnavailable(f"{app_id}: {code} ({result.status}): {detail}")
        return result

    async def close(self) -> None:
        session = self._session.take()
        if session is not None and not session.closed:
            await session.close()


def request_headers(headers: dict[str, str], content_type: str | None) -> dict[str, str]:
    """One Content-Type header in the SDK's spelling (it adds its own when it sees none)."""
    sent = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    given = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    chosen = given or content_type
    if chosen:
        sent[CONTENT_TYPE] = chosen
    return sent
