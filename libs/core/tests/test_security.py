"""CurrentPrincipal / RequirePermission on a real app: 401 without a valid token, 403 without
the permission, and the principal handed to the route when both are there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from opsconductor_core.app import create_service_app
from opsconductor_core.problems import PROBLEM_MEDIA_TYPE
from opsconductor_core.security import (
    CurrentPrincipal,
    Principal,
    RequirePermission,
    TokenAuthenticator,
)
from opsconductor_core.settings import PlatformSettings
from opsconductor_core.tokens import (
    SigningKey,
    TokenVerifier,
    generate_private_pem,
    new_access_claims,
    sign,
    signing_key,
)

ISSUER, AUDIENCE = "opsconductor", "opsconductor-api"
API_TOKEN = "opsc_api_0123456789abcdef"

router = APIRouter()


@router.get("/me")
async def me(principal: CurrentPrincipal) -> dict[str, Any]:
    return {"sub": principal.subject, "name": principal.username, "kind": principal.kind,
            "perms": sorted(principal.permissions)}


@router.post("/users")
async def create_user(principal: RequirePermission("users:write")) -> dict[str, str]:
    return {"created_by": principal.subject}


@router.delete("/users")
async def purge(
    principal: RequirePermission("users:write", "roles:write"),
) -> dict[str, str]:
    return {"purged_by": principal.subject}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return signing_key(generate_private_pem())


class World:
    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.revoked: set[str] = set()
        self.introspected: list[str] = []

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.public_jwk]}

    async def is_revoked(self, jti: str) -> bool:
        return jti in self.revoked

    async def introspect(self, token: str) -> Principal | None:
        self.introspected.append(token)
        if token != API_TOKEN:
            return None
        return Principal(subject="svc-1", username="ci-bot", kind="api_token",
                         permissions=frozenset({"users:write"}))

    def token(self, *perms: str, jti: str | None = None) -> str:
        claims = new_access_claims(subject="user-7", issuer=ISSUER, audience=AUDIENCE, ttl_s=300,
                                   extra={"perms": list(perms), "name": "alice"})
        if jti:
            claims["jti"] = jti
        return sign(self.key, claims)


@pytest.fixture
def world(key: SigningKey) -> World:
    return World(key)


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app("users", PlatformSettings(), routers=[router])
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, fetch_jwks=world.jwks)
    app.state.authenticator = TokenAuthenticator(verifier, world.is_revoked, world.introspect)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://users") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert response.json()["status"] == status


class TestUnauthenticated:
    async def test_no_header_is_401_with_a_bearer_challenge(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/users")

        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="opsconductor"'

    @pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token"])
    async def test_malformed_header_is_401(self, client: httpx.AsyncClient, header: str) -> None:
        assert_problem(await client.post("/users", headers={"Authorization": header}), 401)

    async def test_bad_token_is_401_and_says_nothing_about_why(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        forged = signing_key(generate_private_pem())
        token = sign(SigningKey(kid=world.key.kid, private_pem=forged.private_pem),
                     new_access_claims(subject="x", issuer=ISSUER, audience=AUDIENCE, ttl_s=60,
                                       extra={"perms": ["users:write"]}))

        response = await client.post("/users", headers=bearer(token))

        assert_problem(response, 401)
        assert "signature" not in response.text.lower()

    async def test_revoked_token_is_401(self, client: httpx.AsyncClient, world: World) -> None:
        world.revoked.add("jti-gone")

        response = await client.post("/users", headers=bearer(world.token("users:write",
                                                                           jti="jti-gone")))

        assert_problem(response, 401)

    async def test_unknown_api_token_is_401(self, client: httpx.AsyncClient, world: World) -> None:
        response = await client.get("/me", headers=bearer("opsc_api_unknown"))

        assert_problem(response, 401)
        assert world.introspected == ["opsc_api_unknown"]

    async def test_no_authenticator_configured_is_401_not_500(self) -> None:
        app = create_service_app("bare", PlatformSettings(), routers=[router])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bare") as client:
            response = await client.get("/me", headers=bearer("whatever"))

        assert_problem(response, 401)


class TestPermissions:
    async def test_missing_permission_is_403_naming_it(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post("/users", headers=bearer(world.token("users:read")))

        assert_problem(response, 403)
        assert "users:write" in response.json()["detail"]

    async def test_every_listed_permission_is_needed(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        partial = await client.delete("/users", headers=bearer(world.token("users:write")))
        full = await client.delete("/users",
                                   headers=bearer(world.token("users:write", "roles:write")))

        assert_problem(partial, 403)
        assert "roles:write" in partial.json()["detail"]
        assert full.status_code == 200 and full.json() == {"purged_by": "user-7"}

    async def test_granted_permission_reaches_the_route_with_the_principal(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post("/users", headers=bearer(world.token("users:write")))

        assert response.status_code == 200
        assert response.json() == {"created_by": "user-7"}

    async def test_current_principal_reflects_the_token(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get("/me", headers=bearer(world.token("jobs:run", "jobs:read")))

        assert response.json() == {"sub": "user-7", "name": "alice", "kind": "user",
                                   "perms": ["jobs:read", "jobs:run"]}

    async def test_api_tokens_are_introspected_not_parsed(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.post("/users", headers=bearer(API_TOKEN))

        assert response.status_code == 200
        assert response.json() == {"created_by": "svc-1"}
        assert world.introspected == [API_TOKEN]
