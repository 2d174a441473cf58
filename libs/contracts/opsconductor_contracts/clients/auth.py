"""Client of the auth service: JWKS and API-token introspection."""

from __future__ import annotations

from typing import Any

from opsconductor_contracts.clients.base import ServiceClient
from opsconductor_core.problems import ServiceUnavailable
from opsconductor_core.security import Principal


class AuthClient(ServiceClient):
    app_id = "auth"

    async def jwks(self) -> dict[str, Any]:
        response = await self.call("GET", "/auth/jwks")
        if not response.ok:
            raise ServiceUnavailable("The auth service did not return its keys")
        result: dict[str, Any] = response.json()
        return result

    async def introspect_api_token(self, token: str) -> Principal | None:
        response = await self.call("POST", "/internal/api-tokens/introspect",
                                   json_body={"token": token})
        if response.status >= 500:
            # Auth failing is not the token being invalid: 503, so a client retries instead of
            # dropping a good token.
            raise self.unexpected(response)
        if response.status != 200:
            return None
        body = response.json()
        if not body.get("active"):
            return None
        return Principal(subject=body["user_id"], username=body["username"],
                         permissions=frozenset(body["permissions"]), roles=tuple(body["roles"]),
                         token_id=body["token_id"], kind="api_token",
                         expires_at=body.get("expires_at"))
