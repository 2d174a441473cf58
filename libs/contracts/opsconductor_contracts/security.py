"""Wires core's token checks to the runtime: JWKS from auth, deny-list from the state store."""

from __future__ import annotations

from opsconductor_contracts.clients.auth import AuthClient
from opsconductor_contracts.components import REVOKED_JTI_PREFIX, STATE_STORE
from opsconductor_core.security import TokenAuthenticator
from opsconductor_core.settings import PlatformSettings
from opsconductor_core.tokens import JwksFetcher, TokenVerifier
from opsconductor_runtime.interface import Runtime


def runtime_authenticator(runtime: Runtime, settings: PlatformSettings, *,
                          fetch_jwks: JwksFetcher | None = None) -> TokenAuthenticator:
    auth = AuthClient(runtime)

    async def is_revoked(jti: str) -> bool:
        return await runtime.get_state(STATE_STORE, REVOKED_JTI_PREFIX + jti) is not None

    verifier = TokenVerifier(issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                             fetch_jwks=fetch_jwks or auth.jwks)
    return TokenAuthenticator(verifier, is_revoked, auth.introspect_api_token)
