"""HTTP only: validate, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from opsconductor_auth.api_tokens import ApiTokenService
from opsconductor_auth.exceptions import SigningKeyUnavailable
from opsconductor_auth.keys import KeyManager
from opsconductor_auth.schemas import (
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenPage,
    Introspection,
    IntrospectRequest,
    Jwks,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    TokenPair,
)
from opsconductor_auth.service import SessionService
from opsconductor_core.security import CurrentPrincipal
from opsconductor_db.deps import Session
from opsconductor_db.repository import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(tags=["auth"])
internal = APIRouter(tags=["internal"], include_in_schema=False)

# Token-bearing answers must never be cached by a browser or a proxy.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def _sessions(request: Request) -> SessionService:
    service: SessionService = request.app.state.sessions
    return service


async def _api_tokens(request: Request, session: Session) -> ApiTokenService:
    state = request.app.state
    return ApiTokenService(session, users=state.users, publisher=state.publisher,
                           settings=state.settings)


async def _keys(request: Request) -> KeyManager:
    keys: KeyManager = request.app.state.keys
    return keys


Sessions = Annotated[SessionService, Depends(_sessions)]
ApiTokens = Annotated[ApiTokenService, Depends(_api_tokens)]
Keys = Annotated[KeyManager, Depends(_keys)]


def client_address(request: Request) -> str:
    """The gateway overwrites X-Forwarded-For with the real client; without it, the peer."""
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
    if forwarded:
        return forwarded[:64]
    return request.client.host if request.client else "unknown"


@router.post("/auth/login", response_model=TokenPair)
async def login(body: LoginRequest, request: Request, response: Response,
                sessions: Sessions) -> TokenPair:
    response.headers.update(NO_STORE)
    return await sessions.login(body.username, body.password, client_address(request))


@router.post("/auth/refresh", response_model=TokenPair)
async def refresh(body: RefreshRequest, response: Response, sessions: Sessions) -> TokenPair:
    response.headers.update(NO_STORE)
    return await sessions.refresh(body.refresh_token)


@router.post("/auth/logout", status_code=204)
async def logout(body: LogoutRequest, principal: CurrentPrincipal,
                 sessions: Sessions) -> Response:
    await sessions.logout(principal, body.refresh_token)
    return Response(status_code=204)


@router.get("/auth/jwks", response_model=Jwks)
async def jwks(keys: Keys) -> Jwks:
    try:
        await keys.current()  # picks up a rotated secret within key_reload_s
    except SigningKeyUnavailable:
        pass  # still publish the keys already known
    return Jwks.model_validate(await keys.jwks())


@router.post("/auth/api-tokens", status_code=201, response_model=ApiTokenCreated)
async def create_api_token(body: ApiTokenCreate, principal: CurrentPrincipal,
                           response: Response, tokens: ApiTokens) -> ApiTokenCreated:
    response.headers.update(NO_STORE)
    return await tokens.create(principal, body)


@router.get("/auth/api-tokens", response_model=ApiTokenPage)
async def list_api_tokens(
    principal: CurrentPrincipal, tokens: ApiTokens,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ApiTokenPage:
    return await tokens.page(principal, limit=limit, cursor=cursor)


@router.delete("/auth/api-tokens/{token_id}", status_code=204)
async def delete_api_token(token_id: uuid.UUID, principal: CurrentPrincipal,
                           tokens: ApiTokens) -> Response:
    await tokens.delete(principal, token_id)
    return Response(status_code=204)


@internal.post("/internal/api-tokens/introspect", response_model=Introspection,
               response_model_exclude_none=True)
async def introspect_api_token(body: IntrospectRequest, tokens: ApiTokens) -> Introspection:
    return await tokens.introspect(body.token)

