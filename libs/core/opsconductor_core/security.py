"""Who is calling: token checks and the `CurrentPrincipal` / `RequirePermission` dependencies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, Request

from opsconductor_core.problems import Forbidden, Unauthorized
from opsconductor_core.tokens import InvalidToken, TokenVerifier, looks_like_jwt

log = logging.getLogger("opsconductor.security")


@dataclass(frozen=True)
class Principal:
    subject: str
    username: str
    permissions: frozenset[str] = field(default_factory=frozenset)
    roles: tuple[str, ...] = ()
    token_id: str = ""
    kind: Literal["user", "api_token"] = "user"
    expires_at: int | None = None

    def can(self, permission: str) -> bool:
        return permission in self.permissions


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal: ...


RevocationCheck = Callable[[str], Awaitable[bool]]
ApiTokenIntrospector = Callable[[str], Awaitable[Principal | None]]


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    return Principal(
        subject=str(claims["sub"]),
        username=str(claims.get("name", "")),
        permissions=frozenset(str(p) for p in claims.get("perms", [])),
        roles=tuple(str(r) for r in claims.get("roles", [])),
        token_id=str(claims["jti"]),
        kind="user",
        expires_at=int(claims["exp"]),
    )


class TokenAuthenticator:
    """JWTs are verified locally (then the deny-list is checked); API tokens are introspected."""

    def __init__(self, verifier: TokenVerifier, is_revoked: RevocationCheck,
                 introspect_api_token: ApiTokenIntrospector) -> None:
        self._verifier = verifier
        self._is_revoked = is_revoked
        self._introspect = introspect_api_token

    async def authenticate(self, token: str) -> Principal:
        if looks_like_jwt(token):
            try:
                claims = await self._verifier.verify(token)
            except InvalidToken as exc:
                log.info("token rejected", extra={"reason": str(exc)})
                raise Unauthorized() from None
            if await self._is_revoked(str(claims["jti"])):
                log.info("token rejected", extra={"reason": "revoked"})
                raise Unauthorized()
            return principal_from_claims(claims)
        principal = await self._introspect(token)
        if principal is None:
            raise Unauthorized()
        return principal


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def current_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(request)
    if token is None:
        raise Unauthorized()
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is None:
        raise Unauthorized("Authentication is not configured")
    principal = await authenticator.authenticate(token)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def RequirePermission(*permissions: str) -> Any:
    """`principal: RequirePermission("users:write")` — 401 without a token, 403 without the right."""

    async def _check(principal: CurrentPrincipal) -> Principal:
        missing = [p for p in permissions if not principal.can(p)]
        if missing:
            raise Forbidden(f"Missing permission: {', '.join(missing)}")
        return principal

    return Annotated[Principal, Depends(_check)]
