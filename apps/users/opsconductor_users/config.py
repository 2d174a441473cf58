"""Settings of the users service (env prefix `OPSC_USERS_`, plus the shared `OPSC_*` values)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from opsconductor_core.settings import BaseServiceSettings

APP_ID = "users"


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPSC_USERS_", extra="ignore",
                                      populate_by_name=True)

    # Platform-wide name (API.md), hence no service prefix.
    admin_password: str | None = Field(default=None, validation_alias="OPSC_ADMIN_PASSWORD",
                                       repr=False)
    # argon2id cost; defaults are argon2-cffi's RFC 9106 low-memory profile.
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_cost: int = Field(default=65536, ge=8, le=4 * 1024 * 1024)  # KiB
    argon2_parallelism: int = Field(default=4, ge=1, le=64)



@lru_cache
def get_settings() -> Settings:
    return Settings()
