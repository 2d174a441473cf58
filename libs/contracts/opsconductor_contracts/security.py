"""Wires core's token checks to the runtime: JWKS from auth, deny-list from the state store."""

from __future__ import annotations

from opsconductor_contracts.clients.auth import AuthClient
from opsconductor_contracts.components import REVOKED_JTI_PREFIX, STATE_STORE
from opsconductor_core.security import ApiTokenIntrospector, TokenAuthenticator
from opsconductor_core.settings import PlatformSettings
from opsconductor_core.tokens import JwksFetcher, TokenVerifier
from opsconductor_runtime.interface import Runtime


def runtime_authenticator(runtime: Runtime, settings: PlatformSettings, *,
                          fetch_jwks: JwksFetcher | None = None,
                          introspect_api_token: ApiTokenIntrospector | None = None,
                          refresh_floor_s: float = 5.0) -> TokenAuthenticator:
    """`introspect_api_token` and a low `refresh_floor_s` are for auth itself, which answers both
    locally (a JWKS read there is one small query, so it need not be rate-limited)."""
    auth = AuthClient(runtime)

    async def is_revoked(jti: str) -> bool:
        return await runtime.get_state(STATE_STORE, REVOKED_JTI_PREFIX + jti) is not None

    verifier = TokenVerifier(issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                             fetch_jwks=fetch_jwks or auth.jwks, refresh_floor_s=refresh_floor_s)
    return TokenAuthenticator(verifier, is_revoked,
                              introspect_api_token or auth.introspect_api_token)
