"""Settings of the targets service (env prefix `OPSC_TARGETS_`, plus the shared `OPSC_*` values)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from opsconductor_core.settings import BaseServiceSettings

APP_ID = "targets"
# The only app-id that may fetch a decrypted credential.
CREDENTIAL_READER_APP_ID = "executor"


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPSC_TARGETS_", extra="ignore")

    # Loopback targets (127.0.0.0/8, ::1, localhost) are refused unless this is set: a target
    # there reaches the platform's own ports (WinRM is HTTP, so it would be a request forgery).
    # Link-local and cloud-metadata addresses stay refused either way.
    allow_loopback: bool = False

    # Connection tests (POST /targets/{id}/test), per stage.
    test_connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    test_auth_timeout_s: float = Field(default=15.0, gt=0, le=300)
    test_command_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # Health sweep (cron binding tick).
    health_concurrency: int = Field(default=16, ge=1, le=1024)
    health_timeout_s: float = Field(default=8.0, gt=0, le=120)
    health_history_keep: int = Field(default=200, ge=1, le=100_000)
    # Checks slower than this mark an otherwise working target `degraded`.
    degraded_latency_ms: float = Field(default=3000.0, gt=0)
    # How long a tick request waits for its sweep before answering (the sweep goes on).
    tick_wait_s: float = Field(default=25.0, ge=0, le=290)
    # One replica sweeps at a time; the lease expires on its own if that replica dies.
    health_lease_s: int = Field(default=300, ge=1)

    # Master-key rotation: credentials re-wrapped per transaction.
    rewrap_batch: int = Field(default=200, ge=1, le=10_000)

    # Inventory import.
    import_max_targets: int = Field(default=10_000, ge=1, le=1_000_000)


@lru_cache
def get_settings() -> Settings:
    return Settings()
