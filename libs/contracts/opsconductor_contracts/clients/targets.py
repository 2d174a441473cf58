"""Client of the targets service's internal routes.

`get_credential`: the executor's only way to a secret. The route answers only callers whose app-id
is `executor` (the runtime sets the caller header; Dapr access control enforces it in production).
The result's `repr` never shows the secret.

`resolve`: turns a job's target selector (ids and tags) into the targets a run goes to.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from opsconductor_contracts.clients.base import ServiceClient, problem_of
from opsconductor_contracts.jobspec import RunTarget
from opsconductor_core.problems import Forbidden, InvalidInput


class WinrmOptions(BaseModel):
    transport: Literal["ntlm", "basic"] = "ntlm"
    scheme: Literal["https", "http"] = "https"
    verify_tls: bool = True


class TargetCredential(BaseModel):
    """Everything needed to open a session to one target, secret included."""

    target_id: str
    name: str
    host: str
    port: int
    protocol: Literal["ssh", "winrm"]
    username: str
    credential_type: Literal["password", "private_key"]
    password: str | None = Field(default=None, repr=False)
    private_key: str | None = Field(default=None, repr=False)
    passphrase: str | None = Field(default=None, repr=False)
    # Changes whenever the secret does (connection pools key on it).
    version: int
    host_key_fingerprint: str | None = None
    host_key: str | None = None  # the pinned OpenSSH public key line, when known
    winrm: WinrmOptions | None = None


class ResolvedTargets(BaseModel):
    """Answer of `POST /internal/targets/resolve`: the selected targets ordered by name, and the
    requested ids that name no target."""

    items: list[RunTarget]
    missing: list[str] = []


class TargetsClient(ServiceClient):
    app_id = "targets"

    async def get_credential(self, target_id: str) -> TargetCredential | None:
        """None when the target does not exist or has no credential."""
        try:
            target_id = str(uuid.UUID(str(target_id)))
        except ValueError:
            return None  # never let a caller-supplied string shape the path
        response = await self.call("GET", f"/internal/targets/{target_id}/credential")
        if response.status == 200:
            return TargetCredential.model_validate(response.json())
        if response.status == 404:
            return None
        if response.status == 403:
            raise Forbidden("Only the executor may fetch target credentials")
        raise self.unexpected(response)

    async def resolve(self, ids: Sequence[str] = (), tags: Sequence[str] = ()) -> ResolvedTargets:
        """Targets with one of `ids`, plus targets carrying every one of `tags` (each once).

        A malformed id or tag is InvalidInput (its `errors` keyed `ids` / `tags`)."""
        body: dict[str, Any] = {"ids": [str(i) for i in ids], "tags": list(tags)}
        response = await self.call("POST", "/internal/targets/resolve", json_body=body)
        if response.status == 200:
            return ResolvedTargets.model_validate(response.json())
        if response.status == 422:
            detail, errors = problem_of(response)
            raise InvalidInput(detail or "Invalid target selector", errors=errors)
        raise self.unexpected(response)
