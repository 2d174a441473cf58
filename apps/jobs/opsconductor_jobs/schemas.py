"""Request and response shapes. Requests are closed (unknown fields → 422); no response carries a
run's parameter values."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
)

from opsconductor_contracts.jobspec import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    ParameterSpec,
    RetrySpec,
    StepSpec,
)
from opsconductor_jobs.models import DESCRIPTION_MAX, NAME_MAX

STEPS_MAX = 100
PARAMETERS_MAX = 50
SELECTOR_IDS_MAX = 5000
SELECTOR_TAGS_MAX = 20
RUN_ROLES_MAX = 50
JOB_TIMEOUT_MAX = 7 * 86_400
PARAMETER_VALUE_MAX = 65_536

TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PARAMETER_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
SHA256_RE = r"^[0-9a-fA-F]{64}$"

Severity = Literal["error", "danger", "warning"]
ParameterInput = StrictBool | StrictInt | Annotated[StrictStr, StringConstraints(
    max_length=PARAMETER_VALUE_MAX)]


def normalize_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("a job needs a name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("no control characters")
    return value


def normalize_tags(values: list[str]) -> list[str]:
    tags = set()
    for value in values:
        tag = value.strip().lower()
        if not TAG_RE.match(tag):
            raise ValueError("a tag is 1 to 64 of a-z 0-9 . _ - (starting with a letter or digit)")
        tags.add(tag)
    return sorted(tags)


def normalize_roles(values: list[str]) -> list[str]:
    for value in values:
        if not ROLE_RE.match(value):
            raise ValueError("a role name is 1 to 64 of a-z 0-9 . _ - (starting with a letter "
                             "or digit)")
    return sorted(set(values))


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetSelector(_Request):
    """Targets with one of `ids`, plus targets carrying every one of `tags`."""

    ids: list[uuid.UUID] = Field(default_factory=list, max_length=SELECTOR_IDS_MAX)
    tags: list[Annotated[str, StringConstraints(max_length=80)]] = Field(
        default_factory=list, max_length=SELECTOR_TAGS_MAX)

    _tags = field_validator("tags")(normalize_tags)

    @field_validator("ids")
    @classmethod
    def _unique_ids(cls, value: list[uuid.UUID]) -> list[uuid.UUID]:
        return list(dict.fromkeys(value))

    @property
    def empty(self) -> bool:
        return not self.ids and not self.tags


JobName = Annotated[str, StringConstraints(max_length=NAME_MAX + 16)]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)]
Steps = Annotated[list[StepSpec], Field(min_length=1, max_length=STEPS_MAX)]
Parameters = Annotated[list[ParameterSpec], Field(max_length=PARAMETERS_MAX)]
Concurrency = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]
JobTimeout = Annotated[int, Field(ge=1, le=JOB_TIMEOUT_MAX)]
RunRoles = Annotated[list[Annotated[str, StringConstraints(max_length=64)]],
                     Field(max_length=RUN_ROLES_MAX)]


class Definition(BaseModel):
    """The versioned part of a job (stored as one JSON document per version)."""

    steps: list[StepSpec]
    parameters: list[ParameterSpec] = []
    targets: TargetSelector = TargetSelector()
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: int | None = None
    retry: RetrySpec = RetrySpec()
    run_roles: list[str] = []


class JobCreate(_Request):
    name: JobName
    description: Description = ""
    steps: Steps
    parameters: Parameters = []
    targets: TargetSelector = Field(default_factory=TargetSelector)
    concurrency: Concurrency = DEFAULT_CONCURRENCY
    timeout_s: JobTimeout | None = None
    retry: RetrySpec = Field(default_factory=RetrySpec)
    # Roles allowed to run the job (besides admins); empty: anyone holding jobs:run.
    run_roles: RunRoles = []

    _name = field_validator("name")(normalize_name)
    _roles = field_validator("run_roles")(normalize_roles)

    def definition(self) -> Definition:
        return Definition.model_validate(self.model_dump(exclude={"name", "description"}))


class JobUpdate(_Request):
    """Only the fields given change. `timeout_s: null` removes the job timeout."""

    name: JobName | None = None
    description: Description | None = None
    steps: Steps | None = None
    parameters: Parameters | None = None
    targets: TargetSelector | None = None
    concurrency: Concurrency | None = None
    timeout_s: JobTimeout | None = None
    retry: RetrySpec | None = None
    run_roles: RunRoles | None = None

    @field_validator("name", "description", "steps", "parameters", "targets", "concurrency",
                     "retry", "run_roles")
    @classmethod
    def _not_null(cls, value: Any, info: Any) -> Any:
        # Validators run only on given values: None here is an explicit null.
        if value is None:
            raise ValueError("may be left out but not null")
        if info.field_name == "name":
            return normalize_name(value)
        if info.field_name == "run_roles":
            return normalize_roles(value)
        return value


class Finding(BaseModel):
    severity: Severity
    step: str | None = None
    field: str | None = None
    rule: str | None = None
    message: str


class ValidationResult(BaseModel):
    valid: bool
    findings: list[Finding]


class DangerousStep(BaseModel):
    """A step whose text matches a dangerous-command rule; it runs only once approved."""

    step: str
    field: str
    sha256: str
    rules: list[str]
    approved: bool
    approved_by: str | None = None
    approved_at: datetime | None = None


class JobRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    owner_id: str
    version: int
    steps: list[StepSpec]
    parameters: list[ParameterSpec]
    targets: TargetSelector
    concurrency: int
    timeout_s: int | None
    retry: RetrySpec
    run_roles: list[str]
    created_at: datetime
    updated_at: datetime
    updated_by: str
    dangerous_steps: list[DangerousStep]
    # Names of dangerous steps nobody approved yet: the job cannot run while this is not empty.
    blocked_steps: list[str]


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class VersionSummary(BaseModel):
    version: int
    name: str
    changed: list[str]
    created_at: datetime
    created_by: str


class VersionPage(BaseModel):
    items: list[VersionSummary]
    next_cursor: str | None


class VersionRead(VersionSummary):
    description: str
    steps: list[StepSpec]
    parameters: list[ParameterSpec]
    targets: TargetSelector
    concurrency: int
    timeout_s: int | None
    retry: RetrySpec
    run_roles: list[str]


class ApprovalCreate(_Request):
    step_name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    step_sha256: Annotated[str, StringConstraints(pattern=SHA256_RE)]

    @field_validator("step_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class ApprovalRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: uuid.UUID
    version: int
    step_name: str
    step_sha256: str
    rules: list[str]
    approved_by: str
    approved_at: datetime


class RunCreate(_Request):
    parameters: dict[Annotated[str, StringConstraints(pattern=PARAMETER_NAME)], ParameterInput] = (
        Field(default_factory=dict, max_length=PARAMETERS_MAX))
    # Replaces the job's own selector for this run.
    targets: TargetSelector | None = None


class RunAccepted(BaseModel):
    execution_id: str
