"""Settings of the jobs service (env prefix `OPSC_JOBS_`, plus the shared `OPSC_*` values)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from opsconductor_core.settings import BaseServiceSettings

APP_ID = "jobs"


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPSC_JOBS_", extra="ignore")

    # Extra dangerous-command rules (a JSON list of {id, description, pattern, applies_to}),
    # added to the built-in ones; a malformed file stops the service from starting.
    dangerous_rules_file: Path | None = None
    # A run's selector may not resolve to more targets than this.
    max_targets_per_run: int = Field(default=10_000, ge=1, le=100_000)


@lru_cache
def get_settings() -> Settings:
    return Settings()
