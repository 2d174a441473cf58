"""Client of the users service's internal routes."""

from __future__ import annotations

from pydantic import BaseModel

from opsconductor_contracts.clients.base import ServiceClient


class VerifiedUser(BaseModel):
    user_id: str
    username: str
    roles: list[str]
    permissions: list[str]
    active: bool


class UsersClient(ServiceClient):
    app_id = "users"

    async def verify_credentials(self, username: str, password: str) -> VerifiedUser | None:
        """None for an unknown user or a wrong password (the users service takes equal time)."""
        response = await self.call("POST", "/internal/credentials/verify",
                                   json_body={"username": username, "password": password})
        if response.status == 200:
            return VerifiedUser.model_validate(response.json())
        if response.status in (401, 404):
            return None
        raise self.unexpected(response)

    async def get_identity(self, user_id: str) -> VerifiedUser | None:
        """Current roles and permissions of a user (for refresh and API-token checks)."""
        response = await self.call("GET", f"/internal/users/{user_id}/identity")
        if response.status == 200:
            return VerifiedUser.model_validate(response.json())
        if response.status == 404:
            return None
        raise self.unexpected(response)
