"""Every rule about targets: addresses, names, protocols, credentials, host keys, check results."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import asyncssh
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

import opsconductor_contracts.topics as topics
from opsconductor_connectors import HostKeyPin, normalize_fingerprint
from opsconductor_contracts.clients.targets import ResolvedTargets
from opsconductor_contracts.events import (
    CredentialChanged,
    HostKeyPinned,
    TargetCreated,
    TargetDeleted,
    TargetStatusChanged,
    TargetUpdated,
)
from opsconductor_contracts.jobspec import RunTarget
from opsconductor_contracts.permissions import CREDENTIALS_WRITE
from opsconductor_contracts.publisher import EventPublisher
from opsconductor_core.problems import Forbidden, InvalidInput
from opsconductor_core.security import Principal
from opsconductor_db.repository import DEFAULT_LIMIT, Page
from opsconductor_db.types import utcnow
from opsconductor_targets.checks import CheckOutcome, CheckTarget, status_for
from opsconductor_targets.config import Settings
from opsconductor_targets.crypto import CredentialSecret
from opsconductor_targets.exceptions import (
    AddressRefused,
    CredentialNotFound,
    NotPresented,
    NotSsh,
    TargetNameTaken,
    TargetNotFound,
)
from opsconductor_targets.export import ExportRow
from opsconductor_targets.hosts import HostRefused, check_host_literal
from opsconductor_targets.models import (
    DEFAULT_PORTS,
    MESSAGE_MAX,
    Credential,
    HealthCheck,
    Target,
)
from opsconductor_targets.repository import (
    CredentialRepository,
    HealthRepository,
    TargetRepository,
)
from opsconductor_targets.schemas import (
    CredentialInput,
    HostKeyPinRequest,
    TargetCreate,
    TargetUpdate,
    WinrmInput,
)
from opsconductor_targets.vault import CredentialVault

log = logging.getLogger("opsconductor.targets")

SYSTEM_ACTOR = "system"


def parse_pin(value: str, field: str = "host_key") -> HostKeyPin:
    try:
        return HostKeyPin.parse(value)
    except ValueError:
        raise InvalidInput("Not a host key", errors={
            field: "give a SHA256:... fingerprint or an OpenSSH public key line"}) from None


def _check_private_key(key: str, passphrase: str | None) -> None:
    try:
        asyncssh.import_private_key(key, passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError, TypeError):
        # `from None` and a fixed message: the parser's text may quote key material.
        raise InvalidInput("The private key cannot be read", errors={
            "credential.private_key": "not a readable private key (malformed, or encrypted and "
                                      "the passphrase is missing or wrong)"}) from None


async def validate_credential(credential: CredentialInput) -> CredentialSecret:
    if credential.type == "private_key":
        assert credential.private_key is not None
        # KDFs of encrypted keys take real CPU time: off the event loop.
        await asyncio.to_thread(_check_private_key, credential.private_key, credential.passphrase)
        return CredentialSecret(private_key=credential.private_key,
                                passphrase=credential.passphrase)
    return CredentialSecret(password=credential.password)


def _winrm_fields(protocol: str, winrm: WinrmInput | None) -> tuple[str | None, str | None,
                                                                      bool | None]:
    if protocol != "winrm":
        return None, None, None
    options = winrm or WinrmInput()
    if options.transport == "basic" and options.scheme == "http":
        raise InvalidInput("Basic authentication over plain HTTP would send the password in "
                           "clear text", errors={"winrm.scheme": "use https with basic"})
    return options.transport, options.scheme, options.verify_tls


class TargetsService:
    def __init__(self, session: AsyncSession, publisher: EventPublisher, vault: CredentialVault,
                 settings: Settings) -> None:
        self.session = session
        self.publisher = publisher
        self.vault = vault
        self.settings = settings
        self.targets = TargetRepository(session)
        self.credentials = CredentialRepository(session)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, target_id: uuid.UUID) -> Target:
        target = await self.targets.get(target_id)
        if target is None:
            raise TargetNotFound()
        return target

    async def search(self, *, tags: Sequence[str] = (), protocol: str | None = None,
                     status: str | None = None, q: str | None = None,
                     limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Target]:
        return await self.targets.search(tags=tags, protocol=protocol, status=status, q=q,
                                         limit=limit, cursor=cursor)

    async def resolve(self, ids: Sequence[uuid.UUID], tags: Sequence[str]) -> ResolvedTargets:
        """A run's targets: the listed ids plus every target carrying all the tags."""
        rows = await self.targets.resolve(ids, tags)
        seen = {row[0] for row in rows}
        return ResolvedTargets(
            items=[RunTarget(target_id=str(i), name=name, protocol=protocol)
                   for i, name, protocol in rows],
            missing=[str(i) for i in dict.fromkeys(ids) if i not in seen])

    async def export_rows(self, *, tags: Sequence[str] = (), protocol: str | None = None,
                          status: str | None = None, q: str | None = None) -> list[ExportRow]:
        rows: list[ExportRow] = []
        cursor: str | None = None
        while True:
            page = await self.search(tags=tags, protocol=protocol, status=status, q=q,
                                     limit=500, cursor=cursor)
            rows += [ExportRow(name=t.name, host=t.host, port=t.port, protocol=t.protocol,
                               username=t.username, tags=t.tags, os=t.os,
                               description=t.description, winrm_transport=t.winrm_transport,
                               winrm_scheme=t.winrm_scheme, winrm_verify_tls=t.winrm_verify_tls,
                               host_key_fingerprint=t.host_key_fingerprint)
                     for t in page.items]
            if page.next_cursor is None:
                return rows
            cursor = page.next_cursor

    # --- writes ------------------------------------------------------------------------------

    def _check_address(self, host: str) -> None:
        try:
            check_host_literal(host, allow_loopback=self.settings.allow_loopback)
        except HostRefused as exc:
            raise AddressRefused(str(exc)) from None

    async def create(self, principal: Principal, data: TargetCreate) -> Target:
        if data.credential is not None and not principal.can(CREDENTIALS_WRITE):
            raise Forbidden(f"Missing permission: {CREDENTIALS_WRITE} (to set a credential)")
        self._check_address(data.host)
        pin = parse_pin(data.host_key) if data.host_key else None
        transport, scheme, verify = _winrm_fields(data.protocol, data.winrm)
        secret = await validate_credential(data.credential) if data.credential else None
        if await self.targets.by_name(data.name) is not None:
            raise TargetNameTaken(data.name)
        now = utcnow()
        target = Target(id=uuid.uuid4(), name=data.name, name_key=data.name.lower(),
                        host=data.host, port=data.port or DEFAULT_PORTS[data.protocol],
                        protocol=data.protocol, os=data.os, description=data.description,
                        username=data.username, winrm_transport=transport, winrm_scheme=scheme,
                        winrm_verify_tls=verify, status="unknown", credential_version=0,
                        created_at=now, updated_at=now)
        if pin is not None:
            target.host_key_fingerprint, target.host_key = pin.fingerprint, pin.public_key
            target.host_key_pinned_at = now
        self.targets.set_tags(target, data.tags)
        try:
            await self.targets.add(target)
        except IntegrityError:
            raise TargetNameTaken(data.name) from None
        actor = principal.subject
        await self._emit(topics.TARGET_CREATED, actor, target, TargetCreated(
            target_id=str(target.id), name=target.name, host=target.host, port=target.port,
            protocol=target.protocol, tags=target.tags, has_credential=secret is not None))
        if secret is not None and data.credential is not None:
            await self._store_secret(target, data.credential.type, secret, actor)
        if pin is not None:
            await self._emit(topics.HOST_KEY_PINNED, actor, target, HostKeyPinned(
                target_id=str(target.id), name=target.name, fingerprint=pin.fingerprint))
        return target

    async def update(self, principal: Principal, target_id: uuid.UUID,
                     data: TargetUpdate) -> Target:
        target = await self.get(target_id)
        fields = data.model_fields_set
        changed: list[str] = []
        protocol = data.protocol if "protocol" in fields and data.protocol else target.protocol
        if "name" in fields and data.name and data.name != target.name:
            other = await self.targets.by_name(data.name)
            if other is not None and other.id != target.id:
                raise TargetNameTaken(data.name)
            changed.append("name")
        if "host" in fields and data.host and data.host != target.host:
            self._check_address(data.host)
            changed.append("host")
        port = target.port
        if protocol != target.protocol:
            if protocol == "winrm" and target.credential_type == "private_key":
                raise InvalidInput("WinRM targets take a password credential", errors={
                    "protocol": "replace the private key with a password first"})
            if "port" not in fields and target.port == DEFAULT_PORTS[target.protocol]:
                port = DEFAULT_PORTS[protocol]
            changed.append("protocol")
        if "port" in fields and data.port is not None:
            port = data.port
        if port != target.port:
            changed.append("port")
        pin: HostKeyPin | None = None
        pin_given = "host_key" in fields
        if pin_given and data.host_key is not None:
            if protocol != "ssh":
                raise NotSsh()
            pin = parse_pin(data.host_key)
        current_winrm = WinrmInput(transport=target.winrm_transport or "ntlm",  # type: ignore[arg-type]
                                   scheme=target.winrm_scheme or "https",  # type: ignore[arg-type]
                                   verify_tls=target.winrm_verify_tls is not False)
        if "winrm" in fields and protocol != "winrm":
            raise InvalidInput("winrm options are for WinRM targets only",
                               errors={"winrm": "the target is not a WinRM target"})
        winrm = _winrm_fields(protocol, data.winrm if "winrm" in fields else current_winrm)
        if winrm != (target.winrm_transport, target.winrm_scheme, target.winrm_verify_tls):
            if protocol == target.protocol:
                changed.append("winrm")
        simple = {"os": data.os, "description": data.description, "username": data.username}
        for name, value in simple.items():
            if name in fields and (value is not None or name == "os") \
                    and value != getattr(target, name):
                changed.append(name)
        tags = data.tags if "tags" in fields and data.tags is not None else target.tags
        if tags != target.tags:
            changed.append("tags")
        pin_changed = pin_given and (pin.fingerprint if pin else None) != target.host_key_fingerprint
        leaving_ssh = protocol != "ssh" and target.host_key_fingerprint is not None
        if pin_changed or leaving_ssh:
            changed.append("host_key")
        if not changed:
            return target

        now = utcnow()
        previous_pin = target.host_key_fingerprint
        if "name" in changed and data.name:
            target.name, target.name_key = data.name, data.name.lower()
        if "host" in changed and data.host:
            target.host = data.host
        target.protocol, target.port = protocol, port
        target.winrm_transport, target.winrm_scheme, target.winrm_verify_tls = winrm
        for name in ("os", "description", "username"):
            if name in changed:
                setattr(target, name, simple[name])
        if "tags" in changed:
            self.targets.set_tags(target, tags)
        if "host_key" in changed:
            target.host_key_fingerprint = pin.fingerprint if pin and not leaving_ssh else None
            target.host_key = pin.public_key if pin and not leaving_ssh else None
            target.host_key_pinned_at = now if target.host_key_fingerprint else None
            if leaving_ssh:
                target.presented_fingerprint = target.presented_host_key = None
        target.updated_at = now
        try:
            await self.session.flush()
        except IntegrityError:
            raise TargetNameTaken(data.name or target.name) from None
        actor = principal.subject
        await self._emit(topics.TARGET_UPDATED, actor, target, TargetUpdated(
            target_id=str(target.id), name=target.name, changed=changed))
        if "host_key" in changed and target.host_key_fingerprint:
            await self._emit(topics.HOST_KEY_PINNED, actor, target, HostKeyPinned(
                target_id=str(target.id), name=target.name,
                fingerprint=target.host_key_fingerprint, previous_fingerprint=previous_pin))
        return target

    async def delete(self, principal: Principal, target_id: uuid.UUID) -> None:
        target = await self.get(target_id)
        event = TargetDeleted(target_id=str(target.id), name=target.name)
        await self.targets.delete(target)
        await self.publisher.emit(self.session, topics.TARGET_DELETED, event,
                                  actor=principal.subject, resource_type="target",
                                  resource_id=event.target_id)

    # --- credentials -------------------------------------------------------------------------

    async def set_credential(self, principal: Principal, target_id: uuid.UUID,
                             data: CredentialInput) -> Target:
        target = await self.get(target_id)
        if target.protocol == "winrm" and data.type != "password":
            raise InvalidInput("WinRM targets take a password credential",
                               errors={"type": "use 'password' for WinRM"})
        secret = await validate_credential(data)
        await self._store_secret(target, data.type, secret, principal.subject)
        return target

    async def clear_credential(self, principal: Principal, target_id: uuid.UUID) -> None:
        target = await self.get(target_id)
        row = await self.credentials.for_target(target.id)
        if row is None:
            raise CredentialNotFound()
        await self.credentials.delete(row)
        now = utcnow()
        target.credential_type = None
        target.credential_version += 1
        target.credential_updated_at = target.updated_at = now
        await self.session.flush()
        await self._emit(topics.CREDENTIAL_CHANGED, principal.subject, target, CredentialChanged(
            target_id=str(target.id), name=target.name, change="cleared",
            version=target.credential_version))

    async def _store_secret(self, target: Target, kind: str, secret: CredentialSecret,
                            actor: str) -> None:
        sealed = await self.vault.seal(target.id, secret)
        now = utcnow()
        row = await self.credentials.for_target(target.id)
        if row is None:
            row = Credential(target_id=target.id, key_id=sealed.key_id,
                             wrapped_key=sealed.wrapped_key, ciphertext=sealed.ciphertext,
                             updated_at=now)
            self.session.add(row)
        else:
            row.key_id, row.wrapped_key, row.ciphertext = (sealed.key_id, sealed.wrapped_key,
                                                           sealed.ciphertext)
            row.updated_at = now
        target.credential_type = kind
        target.credential_version += 1
        target.credential_updated_at = target.updated_at = now
        await self.session.flush()
        await self._emit(topics.CREDENTIAL_CHANGED, actor, target, CredentialChanged(
            target_id=str(target.id), name=target.name, change="set", credential_type=kind,
            version=target.credential_version))

    async def secret_of(self, target: Target) -> CredentialSecret | None:
        row = await self.credentials.for_target(target.id)
        return None if row is None else await self.vault.open(row)

    async def with_secret(self, target_id: uuid.UUID) -> tuple[Target, CredentialSecret | None]:
        """A target and its opened credential, for a run (one query)."""
        found = await self.credentials.with_target(target_id)
        if found is None:
            raise TargetNotFound()
        target, row = found
        return target, None if row is None else await self.vault.open(row)

    # --- host keys ---------------------------------------------------------------------------

    async def pin_host_key(self, principal: Principal, target_id: uuid.UUID,
                           data: HostKeyPinRequest) -> Target:
        target = await self.get(target_id)
        if target.protocol != "ssh":
            raise NotSsh()
        if data.public_key:
            pin = parse_pin(data.public_key, "public_key")
            if data.fingerprint:
                try:
                    matches = normalize_fingerprint(data.fingerprint) == pin.fingerprint
                except ValueError:
                    matches = False
                if not matches:
                    raise InvalidInput("The fingerprint is not the public key's", errors={
                        "fingerprint": "does not match public_key"})
        else:
            assert data.fingerprint is not None
            try:
                fingerprint = normalize_fingerprint(data.fingerprint)
            except ValueError as exc:
                raise InvalidInput("Not a fingerprint", errors={"fingerprint": str(exc)}) from None
            if fingerprint != target.presented_fingerprint:
                raise NotPresented()
            key = target.presented_host_key
            pin = HostKeyPin(fingerprint, key) if key else HostKeyPin(fingerprint)
        if pin.fingerprint == target.host_key_fingerprint:
            return target
        previous = target.host_key_fingerprint
        now = utcnow()
        target.host_key_fingerprint, target.host_key = pin.fingerprint, pin.public_key
        target.host_key_pinned_at = target.updated_at = now
        if target.presented_fingerprint == pin.fingerprint:
            target.presented_fingerprint = target.presented_host_key = None
            target.presented_at = None
        await self.session.flush()
        await self._emit(topics.HOST_KEY_PINNED, principal.subject, target, HostKeyPinned(
            target_id=str(target.id), name=target.name, fingerprint=pin.fingerprint,
            previous_fingerprint=previous))
        return target

    # --- checks ------------------------------------------------------------------------------

    async def check_target(self, target_id: uuid.UUID) -> CheckTarget:
        target = await self.get(target_id)
        return CheckTarget(
            id=target.id, name=target.name, host=target.host, port=target.port,
            protocol=target.protocol, username=target.username,
            secret=await self.secret_of(target), credential_version=target.credential_version,
            host_key_fingerprint=target.host_key_fingerprint, host_key=target.host_key,
            winrm_transport=target.winrm_transport, winrm_scheme=target.winrm_scheme,
            winrm_verify_tls=target.winrm_verify_tls)

    async def record_check(self, target: Target, outcome: CheckOutcome, *, source: str,
                           actor: str) -> str:
        check = outcome.check
        now = utcnow()
        status = status_for(check, self.settings.degraded_latency_ms)
        message = check.message[:MESSAGE_MAX]
        self.session.add(HealthCheck(target_id=target.id, checked_at=now, status=status,
                                     ok=check.ok, stage=check.stage.value,
                                     latency_ms=round(check.latency_ms, 1), message=message,
                                     source=source))
        if outcome.presented_fingerprint and target.protocol == "ssh":
            target.presented_fingerprint = outcome.presented_fingerprint
            target.presented_host_key = outcome.presented_key
            target.presented_at = now
        previous = target.status
        target.last_checked_at = now
        target.last_check_stage = check.stage.value
        target.last_check_message = message
        if status != previous:
            target.status, target.status_changed_at = status, now
            await self._emit(topics.TARGET_STATUS_CHANGED, actor, target, TargetStatusChanged(
                target_id=str(target.id), name=target.name, previous=previous, status=status,
                stage=None if check.ok else check.stage.value, message=message, checked_at=now))
        await self.session.flush()
        await HealthRepository(self.session).prune(target.id, self.settings.health_history_keep)
        return status

    # --- helpers -----------------------------------------------------------------------------

    async def _emit(self, topic: str, actor: str, target: Target, payload: BaseModel) -> None:
        await self.publisher.emit(self.session, topic, payload, actor=actor, resource_type="target",
                                  resource_id=str(target.id))
