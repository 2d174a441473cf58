"""HTTP only: parse, authorise at the door, call the service, shape the answer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status

from opsconductor_contracts.clients.targets import ResolvedTargets, TargetCredential
from opsconductor_contracts.permissions import CREDENTIALS_WRITE, TARGETS_READ, TARGETS_WRITE
from opsconductor_core.problems import Forbidden, InvalidInput
from opsconductor_core.security import CurrentPrincipal, Principal
from opsconductor_db.deps import Session
from opsconductor_db.repository import DEFAULT_LIMIT, MAX_LIMIT
from opsconductor_targets.checks import CheckLimits, run_check
from opsconductor_targets.config import CREDENTIAL_READER_APP_ID
from opsconductor_targets.exceptions import CallerNotAllowed, CredentialNotFound
from opsconductor_targets.export import to_csv, to_ini, to_yaml
from opsconductor_targets.health import HealthSweeper
from opsconductor_targets.importer import TargetImporter
from opsconductor_targets.inventory import FORMATS, detect_format
from opsconductor_targets.repository import HealthRepository
from opsconductor_targets.schemas import (
    ConnectionTestRead,
    CredentialInput,
    HealthEntry,
    HealthRead,
    HostKeyPinRequest,
    ImportResult,
    Status,
    TargetCreate,
    TargetPage,
    TargetRead,
    TargetResolveRequest,
    TargetUpdate,
    normalize_tag,
)
from opsconductor_targets.service import TargetsService

log = logging.getLogger("opsconductor.targets.api")

router = APIRouter(tags=["targets"])
internal_router = APIRouter(tags=["internal"], include_in_schema=False)
CALLER_HEADER = "dapr-caller-app-id"

def _require(*permissions: str) -> Callable[..., Awaitable[Principal]]:
    async def _check(principal: CurrentPrincipal) -> Principal:
        missing = [p for p in permissions if not principal.can(p)]
        if missing:
            raise Forbidden(f"Missing permission: {', '.join(missing)}")
        return principal

    return _check


Reader = Annotated[Principal, Depends(_require(TARGETS_READ))]
Writer = Annotated[Principal, Depends(_require(TARGETS_WRITE))]
CredentialWriter = Annotated[Principal, Depends(_require(TARGETS_WRITE, CREDENTIALS_WRITE))]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]
Tags = Annotated[list[str], Query(alias="tag", max_length=20)]
ProtocolFilter = Annotated[Literal["ssh", "winrm"] | None, Query()]
Text = Annotated[str | None, Query(max_length=200)]


async def _service(request: Request, session: Session) -> TargetsService:
    state = request.app.state
    return TargetsService(session, state.publisher, state.vault, state.settings)


Targets = Annotated[TargetsService, Depends(_service)]


def _tags(values: list[str]) -> list[str]:
    try:
        return [normalize_tag(v) for v in values]
    except ValueError as exc:
        raise InvalidInput("Invalid tag filter", errors={"tag": str(exc)}) from None


@router.get("/targets", response_model=TargetPage)
async def list_targets(_: Reader, targets: Targets, tag: Tags = [],  # noqa: B006 - FastAPI query
                       protocol: ProtocolFilter = None, status: Status | None = None,
                       q: Text = None, limit: Limit = DEFAULT_LIMIT,
                       cursor: Cursor = None) -> TargetPage:
    page = await targets.search(tags=_tags(tag), protocol=protocol, status=status, q=q,
                                limit=limit, cursor=cursor)
    return TargetPage(items=[TargetRead.model_validate(t) for t in page.items],
                      next_cursor=page.next_cursor)


@router.post("/targets", response_model=TargetRead, status_code=status.HTTP_201_CREATED)
async def create_target(body: TargetCreate, principal: Writer, targets: Targets,
                        response: Response) -> TargetRead:
    target = await targets.create(principal, body)
    response.headers["Location"] = f"/targets/{target.id}"
    return TargetRead.model_validate(target)


@router.get("/targets/export")
async def export_targets(_: Reader, targets: Targets,
                         format: Literal["csv", "yaml", "ini"] = "csv",
                         tag: Tags = [],  # noqa: B006
                         protocol: ProtocolFilter = None, status: Status | None = None,
                         q: Text = None) -> Response:
    rows = await targets.export_rows(tags=_tags(tag), protocol=protocol, status=status, q=q)
    render, media = {"csv": (to_csv, "text/csv"), "yaml": (to_yaml, "application/yaml"),
                     "ini": (to_ini, "text/plain")}[format]
    return Response(render(rows), media_type=f"{media}; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="targets.{format}"'})


_INVENTORY_BODY = {"requestBody": {"required": True, "content": {
    media: {"schema": {"type": "string"}}
    for media in ("text/plain", "text/csv", "application/yaml")}}}


@router.post("/targets/import", response_model=ImportResult, openapi_extra=_INVENTORY_BODY)
async def import_targets(
    request: Request, principal: Writer, targets: Targets,
    format: Literal["ini", "yaml", "csv"] | None = None,
    dry_run: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
    default_user: Annotated[str | None, Query(max_length=128)] = None,
) -> ImportResult:
    """The body is the file itself: an Ansible inventory (INI or YAML) or CSV."""
    raw = await request.body()  # the size cap is enforced before this (413)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("The file is not UTF-8 text", errors={"body": "not UTF-8"}) from None
    fmt = format or detect_format(text, request.headers.get("content-type"))
    assert fmt in FORMATS
    importer = TargetImporter(targets, max_targets=request.app.state.settings.import_max_targets)
    return await importer.run(principal, text, fmt, dry_run=dry_run, offset=offset, limit=limit,
                              default_user=default_user)


@router.get("/targets/{target_id}", response_model=TargetRead)
async def read_target(target_id: uuid.UUID, _: Reader, targets: Targets) -> TargetRead:
    return TargetRead.model_validate(await targets.get(target_id))


@router.patch("/targets/{target_id}", response_model=TargetRead)
async def update_target(target_id: uuid.UUID, body: TargetUpdate, principal: Writer,
                        targets: Targets) -> TargetRead:
    return TargetRead.model_validate(await targets.update(principal, target_id, body))


@router.delete("/targets/{target_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_target(target_id: uuid.UUID, principal: Writer, targets: Targets) -> Response:
    await targets.delete(principal, target_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/targets/{target_id}/credential", response_model=TargetRead)
async def set_credential(target_id: uuid.UUID, body: CredentialInput,
                         principal: CredentialWriter, targets: Targets) -> TargetRead:
    """Write-only: the answer says that a credential is set, never what it is."""
    return TargetRead.model_validate(await targets.set_credential(principal, target_id, body))


@router.delete("/targets/{target_id}/credential", status_code=status.HTTP_204_NO_CONTENT)
async def clear_credential(target_id: uuid.UUID, principal: CredentialWriter,
                           targets: Targets) -> Response:
    await targets.clear_credential(principal, target_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/targets/{target_id}/host-key", response_model=TargetRead)
async def pin_host_key(target_id: uuid.UUID, body: HostKeyPinRequest, principal: Writer,
                       targets: Targets) -> TargetRead:
    return TargetRead.model_validate(await targets.pin_host_key(principal, target_id, body))


@router.post("/targets/{target_id}/test", response_model=ConnectionTestRead,
             response_model_exclude_none=True)
async def test_connection(target_id: uuid.UUID, principal: Writer,
                          request: Request) -> ConnectionTestRead:
    """Runs outside any database transaction: a test may take seconds."""
    state = request.app.state
    sweeper: HealthSweeper = state.sweeper
    async with state.db.transaction() as session:
        snapshot = await sweeper.service(session).check_target(target_id)
    settings = state.settings
    limits = CheckLimits(connect_s=settings.test_connect_timeout_s,
                         auth_s=settings.test_auth_timeout_s,
                         command_s=settings.test_command_timeout_s)
    outcome = await run_check(snapshot, allow_loopback=settings.allow_loopback, limits=limits)
    recorded = await sweeper.record(target_id, outcome, source="test", actor=principal.subject)
    return ConnectionTestRead.model_validate(
        {**outcome.check.as_dict(), "status": recorded[1] if recorded else "unknown"})


@router.get("/targets/{target_id}/health", response_model=HealthRead)
async def read_health(target_id: uuid.UUID, _: Reader, targets: Targets, session: Session,
                      limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> HealthRead:
    target = await targets.get(target_id)
    page = await HealthRepository(session).history(target.id, limit=limit, cursor=cursor)
    return HealthRead(target_id=target.id, status=target.status,
                      status_changed_at=target.status_changed_at,
                      last_checked_at=target.last_checked_at,
                      items=[HealthEntry.model_validate(h) for h in page.items],
                      next_cursor=page.next_cursor)


# --- service to service (the gateway never forwards /internal) -------------------------------

@internal_router.get("/internal/targets/{target_id}/credential", response_model=TargetCredential)
async def read_credential(target_id: uuid.UUID, request: Request,
                          targets: Targets) -> TargetCredential:
    """The only way a secret leaves this service: to the executor, for a run."""
    caller = request.headers.get(CALLER_HEADER, "")
    if caller != CREDENTIAL_READER_APP_ID:
        log.warning("credential request refused", extra={"target_id": str(target_id),
                                                         "caller": caller[:64] or None})
        raise CallerNotAllowed()
    target, secret = await targets.with_secret(target_id)
    if secret is None or target.credential_type is None:
        raise CredentialNotFound()
    log.info("credential released", extra={"target_id": str(target.id), "caller": caller,
                                           "version": target.credential_version})
    winrm = None
    if target.protocol == "winrm":
        winrm = {"transport": target.winrm_transport or "ntlm",
                 "scheme": target.winrm_scheme or "https",
                 "verify_tls": target.winrm_verify_tls is not False}
    return TargetCredential.model_validate({
        "target_id": str(target.id), "name": target.name, "host": target.host,
        "port": target.port, "protocol": target.protocol, "username": target.username,
        "credential_type": target.credential_type, "password": secret.password,
        "private_key": secret.private_key, "passphrase": secret.passphrase,
        "version": target.credential_version, "host_key_fingerprint": target.host_key_fingerprint,
        "host_key": target.host_key, "winrm": winrm})


@internal_router.post("/internal/targets/resolve", response_model=ResolvedTargets)
async def resolve_targets(body: TargetResolveRequest, targets: Targets) -> ResolvedTargets:
    """A job's selector → its run targets (callers: jobs, scheduler). Only ids, names and
    protocols leave here, what any `targets:read` holder sees; Dapr access control limits callers."""
    return await targets.resolve(body.ids, body.tags)
