"""Request and response shapes. Requests are strict and closed; no response carries a secret."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from opsconductor_targets.hosts import parse_host
from opsconductor_targets.models import DESCRIPTION_MAX, NAME_MAX, OS_MAX, TAG_MAX, USERNAME_MAX

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_USER_FORBIDDEN = set("\"'`;|&<>(){}*?!,=#")
PASSWORD_MAX = 1024
PRIVATE_KEY_MAX = 16_384
HOST_KEY_INPUT_MAX = 8_192
TAGS_MAX = 50

Protocol = Literal["ssh", "winrm"]
Status = Literal["unknown", "healthy", "degraded", "unreachable"]
Port = Annotated[int, Field(ge=1, le=65535)]


def normalize_name(value: str) -> str:
    value = value.strip()
    if not NAME_RE.match(value):
        raise ValueError("use 1 to 128 of A-Z a-z 0-9 . _ : @ - (starting with a letter or digit)")
    return value


def normalize_tag(value: str) -> str:
    value = value.strip().lower()
    if not TAG_RE.match(value):
        raise ValueError("a tag is 1 to 64 of a-z 0-9 . _ - (starting with a letter or digit)")
    return value


def normalize_tags(values: list[str]) -> list[str]:
    return sorted({normalize_tag(v) for v in values})


def normalize_username(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("a user name is required")
    if value.startswith("-") or any(ch.isspace() or ord(ch) < 32 or ch in _USER_FORBIDDEN
                                    for ch in value):
        raise ValueError("a user name may not start with '-' or hold spaces or shell symbols")
    return value


def normalize_os(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("no control characters")
    return value


def _host(value: str) -> str:
    return parse_host(value)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CredentialInput(_Request):
    """A secret for the target; accepted, encrypted, never shown again."""

    type: Literal["password", "private_key"]
    password: Annotated[str, StringConstraints(max_length=PASSWORD_MAX)] | None = Field(
        default=None, repr=False)
    private_key: Annotated[str, StringConstraints(max_length=PRIVATE_KEY_MAX)] | None = Field(
        default=None, repr=False)
    passphrase: Annotated[str, StringConstraints(max_length=PASSWORD_MAX)] | None = Field(
        default=None, repr=False)

    @model_validator(mode="after")
    def _shape(self) -> CredentialInput:
        if self.type == "password":
            if not self.password:
                raise ValueError("type 'password' needs a non-empty password")
            if self.private_key is not None or self.passphrase is not None:
                raise ValueError("type 'password' takes no private_key or passphrase")
        else:
            if not self.private_key or not self.private_key.strip():
                raise ValueError("type 'private_key' needs private_key")
            if self.password is not None:
                raise ValueError("type 'private_key' takes no password")
            text = self.private_key.strip()
            if not (text.startswith("-----BEGIN ") and "PRIVATE KEY-----" in text):
                raise ValueError("private_key must be a PEM or OpenSSH private key")
            if self.passphrase == "":
                self.passphrase = None
        return self


class WinrmInput(_Request):
    transport: Literal["ntlm", "basic"] = "ntlm"
    scheme: Literal["https", "http"] = "https"
    verify_tls: bool = True


class WinrmRead(BaseModel):
    transport: str
    scheme: str
    verify_tls: bool


class TargetCreate(_Request):
    name: Annotated[str, StringConstraints(max_length=NAME_MAX + 16)]
    host: Annotated[str, StringConstraints(max_length=300)]
    port: Port | None = None
    protocol: Protocol = "ssh"
    os: Annotated[str, StringConstraints(max_length=OS_MAX)] | None = None
    tags: list[Annotated[str, StringConstraints(max_length=TAG_MAX + 16)]] = Field(
        default_factory=list, max_length=TAGS_MAX)
    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] = ""
    username: Annotated[str, StringConstraints(max_length=USERNAME_MAX)]
    credential: CredentialInput | None = None
    # A `SHA256:` fingerprint or an OpenSSH public key line the operator vouches for.
    host_key: Annotated[str, StringConstraints(max_length=HOST_KEY_INPUT_MAX)] | None = None
    winrm: WinrmInput | None = None

    _name = field_validator("name")(normalize_name)
    _host = field_validator("host")(_host)
    _tags = field_validator("tags")(normalize_tags)
    _username = field_validator("username")(normalize_username)
    _os = field_validator("os")(normalize_os)

    @model_validator(mode="after")
    def _protocol_rules(self) -> TargetCreate:
        check_protocol_fields(self.protocol, credential=self.credential, host_key=self.host_key,
                              winrm=self.winrm)
        return self


def check_protocol_fields(protocol: str, *, credential: CredentialInput | None,
                          host_key: str | None, winrm: WinrmInput | None) -> None:
    if protocol == "ssh" and winrm is not None:
        raise ValueError("winrm options are for WinRM targets only")
    if protocol == "winrm":
        if host_key is not None:
            raise ValueError("host_key is for SSH targets (WinRM checks the TLS certificate)")
        if credential is not None and credential.type != "password":
            raise ValueError("WinRM targets take a password credential")


class TargetUpdate(_Request):
    """Only the fields given change. `host_key: null` removes the pin, `os: null` clears it."""

    name: Annotated[str, StringConstraints(max_length=NAME_MAX + 16)] | None = None
    host: Annotated[str, StringConstraints(max_length=300)] | None = None
    port: Port | None = None
    protocol: Protocol | None = None
    os: Annotated[str, StringConstraints(max_length=OS_MAX)] | None = None
    tags: list[Annotated[str, StringConstraints(max_length=TAG_MAX + 16)]] | None = Field(
        default=None, max_length=TAGS_MAX)
    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] | None = None
    username: Annotated[str, StringConstraints(max_length=USERNAME_MAX)] | None = None
    host_key: Annotated[str, StringConstraints(max_length=HOST_KEY_INPUT_MAX)] | None = None
    winrm: WinrmInput | None = None

    _os = field_validator("os")(normalize_os)

    @field_validator("name", "host", "tags", "description", "username", "protocol", "port",
                     "winrm")
    @classmethod
    def _not_null(cls, value: Any, info: Any) -> Any:
        # Validators run only on given values: None here is an explicit null.
        if value is None:
            raise ValueError("may be left out but not null")
        if info.field_name == "name":
            return normalize_name(value)
        if info.field_name == "host":
            return parse_host(value)
        if info.field_name == "tags":
            return normalize_tags(value)
        if info.field_name == "username":
            return normalize_username(value)
        return value


class HostKeyPinRequest(_Request):
    """Pin the fingerprint the target last presented, or a public key the operator vouches for."""

    fingerprint: Annotated[str, StringConstraints(max_length=100)] | None = None
    public_key: Annotated[str, StringConstraints(max_length=HOST_KEY_INPUT_MAX)] | None = None

    @model_validator(mode="after")
    def _one(self) -> HostKeyPinRequest:
        if not self.fingerprint and not self.public_key:
            raise ValueError("give the fingerprint to approve (or the public key)")
        return self


class TargetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    host: str
    port: int
    protocol: str
    os: str | None
    tags: list[str]
    description: str
    username: str
    has_credential: bool
    credential_type: str | None
    credential_updated_at: datetime | None
    host_key_fingerprint: str | None
    host_key_pinned_at: datetime | None
    # What the server presented at the last test, waiting for an operator's approval.
    presented_host_key_fingerprint: str | None
    status: str
    status_changed_at: datetime | None
    last_checked_at: datetime | None
    last_check_stage: str | None
    last_check_message: str | None
    winrm: WinrmRead | None
    created_at: datetime
    updated_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _from_model(cls, data: Any) -> Any:
        if isinstance(data, dict) or not hasattr(data, "tag_rows"):
            return data
        out = {name: getattr(data, name) for name in cls.model_fields
               if name not in ("winrm", "presented_host_key_fingerprint")}
        out["presented_host_key_fingerprint"] = data.presented_fingerprint
        out["winrm"] = None if data.protocol != "winrm" else {
            "transport": data.winrm_transport or "ntlm", "scheme": data.winrm_scheme or "https",
            "verify_tls": True if data.winrm_verify_tls is None else data.winrm_verify_tls}
        return out


class TargetPage(BaseModel):
    items: list[TargetRead]
    next_cursor: str | None


class StageRead(BaseModel):
    stage: str
    ok: bool
    latency_ms: float


class ConnectionTestRead(BaseModel):
    ok: bool
    stage: str
    latency_ms: float
    message: str
    host_key_fingerprint: str | None = None
    os_info: str | None = None
    stages: list[StageRead] = []
    status: str  # the target's health status after this test


class HealthEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    checked_at: datetime
    status: str
    ok: bool
    stage: str | None
    latency_ms: float
    message: str
    source: str


class HealthRead(BaseModel):
    target_id: uuid.UUID
    status: str
    status_changed_at: datetime | None
    last_checked_at: datetime | None
    items: list[HealthEntry]
    next_cursor: str | None


class ImportItem(BaseModel):
    name: str
    action: Literal["create", "update", "unchanged"]
    changes: list[str] = []


class ImportSummary(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0


class ImportResult(BaseModel):
    dry_run: bool
    format: str
    total: int  # targets in the file
    offset: int
    applied: int  # targets in this call's slice
    summary: ImportSummary
    items: list[ImportItem]
    warnings: list[str] = []


RESOLVE_IDS_MAX = 10_000


class TargetResolveRequest(BaseModel):
    """`POST /internal/targets/resolve`: a job's target selector (ids and/or tags)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[uuid.UUID] = Field(default_factory=list, max_length=RESOLVE_IDS_MAX)
    tags: list[Annotated[str, StringConstraints(max_length=TAG_MAX + 16)]] = Field(
        default_factory=list, max_length=TAGS_MAX)

    _tags = field_validator("tags")(normalize_tags)

    @model_validator(mode="after")
    def _something(self) -> TargetResolveRequest:
        if not self.ids and not self.tags:
            raise ValueError("give target ids, tags or both")
        return self
