"""Event payload schemas (the `data` of each CloudEvent). Never a secret in any of them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class UserCreated(BaseModel):
    user_id: str
    username: str
    roles: list[str]


class UserUpdated(BaseModel):
    user_id: str
    username: str
    changed: list[str]
    active: bool
    # True when existing sessions must end (disabled, password changed, roles reduced).
    sessions_revoked: bool = False


class UserDeleted(BaseModel):
    user_id: str
    username: str


class RoleChanged(BaseModel):
    role_id: str
    name: str
    change: str  # created | updated | deleted | granted | revoked
    permissions: list[str] = []
    user_id: str | None = None


class UserActive(BaseModel):
    user_id: str
    at: datetime


class LoginSucceeded(BaseModel):
    user_id: str
    username: str
    at: datetime
    client_address: str | None = None


class LoginFailed(BaseModel):
    username: str
    reason: str
    client_address: str | None = None


class ApiTokenChanged(BaseModel):
    token_id: str
    user_id: str
    name: str


class SessionRevoked(BaseModel):
    user_id: str
    family_id: str | None = None
    reason: str


# --- targets (never a password, key or passphrase: only whether one is set) -------------------

class TargetCreated(BaseModel):
    target_id: str
    name: str
    host: str
    port: int
    protocol: str  # ssh | winrm
    tags: list[str] = []
    has_credential: bool = False


class TargetUpdated(BaseModel):
    target_id: str
    name: str
    changed: list[str]  # field names, e.g. ["host", "tags"]


class TargetDeleted(BaseModel):
    target_id: str
    name: str


class CredentialChanged(BaseModel):
    target_id: str
    name: str
    change: str  # set | cleared
    credential_type: str | None = None  # password | private_key
    version: int


class HostKeyPinned(BaseModel):
    target_id: str
    name: str
    fingerprint: str
    previous_fingerprint: str | None = None


class TargetStatusChanged(BaseModel):
    target_id: str
    name: str
    previous: str  # unknown | healthy | degraded | unreachable
    status: str
    stage: str | None = None  # where the check stopped (resolve, connect, host_key, auth, command)
    message: str = ""
    checked_at: datetime


class JobChanged(BaseModel):
    job_id: str
    name: str
    version: int
    change: str  # created | updated | deleted


class DangerousStepApproved(BaseModel):
    job_id: str
    version: int
    step_name: str
    # The exact approved text's SHA-256 (the text itself may hold anything; the hash identifies it).
    step_sha256: str
    rules: list[str]
    approved_by: str


class ExecutionRequested(BaseModel):
    execution_id: str
    job_id: str


class ExecutionStarted(BaseModel):
    execution_id: str
    job_id: str
    seq: int
    total_targets: int


class OutputChunkEvent(BaseModel):
    seq: int
    target_id: str
    stream: str  # stdout | stderr | system
    data: str
    ts: datetime


class ExecutionOutput(BaseModel):
    execution_id: str
    chunks: list[OutputChunkEvent]


class ExecutionTargetFinished(BaseModel):
    execution_id: str
    seq: int
    target_id: str
    status: str
    exit_code: int | None = None
    attempts: int = 1
    error: str | None = None


class ExecutionCancelRequested(BaseModel):
    execution_id: str
    requested_by: str


class ExecutionFinished(BaseModel):
    execution_id: str
    job_id: str
    seq: int
    status: str
    counts: dict[str, int]
