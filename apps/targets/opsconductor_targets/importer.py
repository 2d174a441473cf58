"""Inventory import: validate the whole file, plan create/update/unchanged per name, apply.

Idempotent by name: importing the same file twice changes nothing the second time. The plan is
sorted by name so `offset`/`limit` slices are stable across calls (the CLI imports in slices to
show progress; each slice is one transaction). Any error anywhere in the file stores nothing.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from opsconductor_contracts.permissions import CREDENTIALS_WRITE
from opsconductor_core.problems import Forbidden, InvalidInput
from opsconductor_core.security import Principal
from opsconductor_targets.inventory import HostSpec, InventoryError, parse
from opsconductor_targets.models import DEFAULT_PORTS, Target
from opsconductor_targets.schemas import (
    CredentialInput,
    ImportItem,
    ImportResult,
    ImportSummary,
    TargetCreate,
    TargetUpdate,
)
from opsconductor_targets.service import TargetsService


@dataclass
class _Planned:
    spec: HostSpec
    data: TargetCreate
    existing: Target | None
    changes: dict[str, Any]
    credential_changed: bool

    @property
    def action(self) -> str:
        if self.existing is None:
            return "create"
        return "update" if self.changes or self.credential_changed else "unchanged"

    @property
    def change_names(self) -> list[str]:
        names = sorted(self.changes)
        return [*names, "credential"] if self.credential_changed else names


def _port(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError("port is not a number")
    return int(text)


def _errors_of(exc: ValidationError) -> str:
    # Field names and messages only: pydantic's input echo could hold a password.
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "credential") or "target"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class TargetImporter:
    def __init__(self, service: TargetsService, *, max_targets: int) -> None:
        self.service = service
        self.max_targets = max_targets

    async def run(self, principal: Principal, text: str, fmt: str, *, dry_run: bool,
                  offset: int = 0, limit: int | None = None,
                  default_user: str | None = None) -> ImportResult:
        try:
            specs, warnings = parse(text, fmt, max_hosts=self.max_targets)
        except InventoryError as exc:
            raise InvalidInput("The inventory cannot be imported", errors=exc.errors) from None
        if any(s.password for s in specs) and not principal.can(CREDENTIALS_WRITE):
            raise Forbidden(f"Missing permission: {CREDENTIALS_WRITE} (the file holds passwords)")
        existing = await self.service.targets.by_names([s.name for s in specs])
        plan: list[_Planned] = []
        errors: dict[str, str] = {}
        for spec in specs:
            where = f"{spec.where}: {spec.name}" if spec.where else spec.name
            try:
                plan.append(await self._plan(spec, existing.get(spec.name.lower()), default_user))
            except ValidationError as exc:
                errors[where] = _errors_of(exc)
            except ValueError as exc:
                errors[where] = str(exc)
            except InvalidInput as exc:
                errors[where] = "; ".join(f"{k}: {v}" for k, v in (exc.errors or {}).items()) \
                    or exc.detail
        if errors:
            raise InvalidInput("The inventory cannot be imported", errors=errors)
        plan.sort(key=lambda p: p.data.name.lower())
        chosen = plan if dry_run else plan[offset:offset + limit if limit else None]
        summary = ImportSummary()
        items: list[ImportItem] = []
        for planned in chosen:
            action = planned.action
            if not dry_run:
                await self._apply(principal, planned)
            counter = {"create": "created", "update": "updated"}.get(action, action)
            setattr(summary, counter, getattr(summary, counter) + 1)
            items.append(ImportItem(name=planned.data.name, action=action,
                                    changes=planned.change_names))
        return ImportResult(dry_run=dry_run, format=fmt, total=len(plan),
                            offset=0 if dry_run else offset, applied=0 if dry_run else len(chosen),
                            summary=summary, items=items, warnings=warnings)

    async def _plan(self, spec: HostSpec, existing: Target | None,
                    default_user: str | None) -> _Planned:
        port = _port(spec.port)
        protocol = spec.protocol or (existing.protocol if existing else "ssh")
        username = spec.username or (existing.username if existing else None) or default_user
        if not username:
            raise ValueError("no user name (set ansible_user, a username column, or "
                             "?default_user=)")
        keep_winrm = existing is not None and existing.protocol == "winrm"
        raw: dict[str, Any] = {
            "name": spec.name, "host": spec.host or spec.name, "protocol": protocol,
            "username": username,
            "tags": spec.tags if spec.tags is not None else (existing.tags if existing else []),
            "description": spec.description if spec.description is not None else (
                existing.description if existing else ""),
        }
        if port is not None:
            raw["port"] = port
        if spec.os is not None:
            raw["os"] = spec.os
        if protocol == "winrm":
            raw["winrm"] = {
                "transport": spec.winrm_transport or (
                    existing.winrm_transport if keep_winrm and existing else None) or "ntlm",
                "scheme": spec.winrm_scheme or (
                    existing.winrm_scheme if keep_winrm and existing else None) or "https",
                "verify_tls": spec.winrm_verify_tls if spec.winrm_verify_tls is not None else (
                    existing.winrm_verify_tls is not False if keep_winrm and existing else True)}
        if spec.password:
            raw["credential"] = {"type": "password", "password": spec.password}
        data = TargetCreate.model_validate(raw)
        self.service._check_address(data.host)
        if data.protocol == "winrm" and data.winrm and data.winrm.transport == "basic" \
                and data.winrm.scheme == "http":
            raise ValueError("Basic authentication over plain HTTP is refused; use https")
        if existing is None:
            return _Planned(spec, data, None, {}, False)
        changes = self._diff(existing, data, port_given=port is not None, os_given=spec.os is not None)
        credential_changed = False
        if spec.password:
            current = None
            if existing.credential_type == "password":
                secret = await self.service.secret_of(existing)
                current = secret.password if secret else None
            credential_changed = current is None or not hmac.compare_digest(
                current.encode(), spec.password.encode())
        return _Planned(spec, data, existing, changes, credential_changed)

    @staticmethod
    def _diff(existing: Target, data: TargetCreate, *, port_given: bool,
              os_given: bool) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name in ("host", "protocol", "username", "description"):
            if getattr(data, name) != getattr(existing, name):
                changes[name] = getattr(data, name)
        if data.tags != existing.tags:
            changes["tags"] = data.tags
        if os_given and data.os != existing.os:
            changes["os"] = data.os
        if port_given:
            port = data.port
        elif data.protocol != existing.protocol and existing.port == DEFAULT_PORTS[existing.protocol]:
            port = DEFAULT_PORTS[data.protocol]
        else:
            port = existing.port
        if port != existing.port:
            changes["port"] = port
        if data.protocol == "winrm" and data.winrm is not None:
            wanted = (data.winrm.transport, data.winrm.scheme, data.winrm.verify_tls)
            current = (existing.winrm_transport, existing.winrm_scheme,
                       existing.winrm_verify_tls is not False)
            if wanted != current:
                changes["winrm"] = data.winrm.model_dump()
        return changes

    async def _apply(self, principal: Principal, planned: _Planned) -> None:
        if planned.existing is None:
            await self.service.create(principal, planned.data)
            return
        if planned.changes:
            await self.service.update(principal, planned.existing.id,
                                      TargetUpdate.model_validate(planned.changes))
        if planned.credential_changed and planned.spec.password:
            await self.service.set_credential(principal, planned.existing.id, CredentialInput(
                type="password", password=planned.spec.password))
