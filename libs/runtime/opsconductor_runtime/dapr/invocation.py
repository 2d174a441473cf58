"""Service invocation through the SDK's HTTP client, keeping the called app's answer whole.

The SDK's invocation client turns every non-2xx answer into an exception without the response
headers; callers here need them (problem+json content type, Retry-After, WWW-Authenticate).
This subclass hands every answer back, and tells an answer of the called app from an error of
the sidecars (unknown app, access denied by policy, breaker open, timeout).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from dapr.clients.exceptions import DaprInternalError
from dapr.clients.http.client import DaprHttpClient
from dapr.clients.http.helpers import get_api_url
from dapr.serializers import DefaultJSONSerializer

from opsconductor_runtime.interface import AppUnavailable, InvokeResponse

CONTENT_TYPE = "Content-Type"


def lowercase(headers: Any) -> dict[str, str]:
    """Header names as the embedded adapter (httpx) gives them: lower case."""
    return {str(k).lower(): str(v) for k, v in headers.items()}


class _Answered(DaprInternalError):
    """A non-2xx response, carried out of the SDK's `send_bytes` intact."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.response = InvokeResponse(status, body, headers)


class _KeepAnswers(DaprHttpClient):
    async def convert_to_error(self, response: aiohttp.ClientResponse) -> DaprInternalError:
        return _Answered(response.status, await response.read(), lowercase(response.headers))


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
    """One per runtime (the SDK client keeps no connection between calls)."""

    def __init__(self, default_timeout_s: int = 60) -> None:
        # The constructor blocks until the sidecar answers its health check: build it only
        # once the sidecar is known to be up.
        self._client = _KeepAnswers(DefaultJSONSerializer(), default_timeout_s)

    async def call(self, app_id: str, method: str, path: str, *, body: bytes | None,
                   headers: dict[str, str], params: Any, timeout_s: float) -> InvokeResponse:
        url = f"{get_api_url()}/invoke/{app_id}/method/{path.lstrip('/')}"
        try:
            data, response = await self._client.send_bytes(
                method=method.upper(), url=url, data=body, headers=dict(headers),
                query_params=params, timeout=timeout_s)  # type: ignore[arg-type]
        except _Answered as answered:
            result = answered.response
            code = sidecar_error(result)
            if code is not None:
                detail = json.loads(result.body).get("message", "")
                raise AppUnavailable(f"{app_id}: {code} ({result.status}): {detail}") from None
            return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AppUnavailable(f"{app_id}: sidecar unreachable or too slow: {exc!r}") from exc
        return InvokeResponse(response.status, data, lowercase(response.headers))


def request_headers(headers: dict[str, str], content_type: str | None) -> dict[str, str]:
    """One Content-Type header in the SDK's spelling (it adds its own when it sees none)."""
    sent = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    given = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    chosen = given or content_type
    if chosen:
        sent[CONTENT_TYPE] = chosen
    return sent
