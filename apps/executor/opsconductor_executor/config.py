"""Settings of the executor service (env prefix `OPSC_EXECUTOR_`, plus the shared `OPSC_*` values)."""

from __future__ import annotations

import os
import secrets
import socket
from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from opsconductor_core.settings import BaseServiceSettings

APP_ID = "executor"
# Who may ask for a run (POST /internal/executions): the jobs service and the scheduler.
RUN_REQUEST_CALLERS = frozenset({"jobs", "scheduler"})
# Who may read the stored stream of an execution (GET /internal/executions/{id}/stream).
STREAM_READER_CALLERS = frozenset({"gateway"})


def default_replica_id() -> str:
    # Unique per process: a restarted process is a new replica and waits for the old lease.
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPSC_EXECUTOR_", extra="ignore")

    # The run request carries the job snapshot, upload contents included (up to 10 MiB each).
    max_body_bytes: int = 32 * 1024 * 1024

    # Identity of this replica in lease rows; set it to a stable name (a pod name) so a
    # restarted replica takes its own executions back at once instead of after the lease.
    replica_id: str = Field(default_factory=default_replica_id, max_length=100)
    # An execution belongs to one replica while its lease is fresh; the owner renews it every
    # lease_s/3, another replica takes over once it has expired.
    lease_s: float = Field(default=15.0, ge=0.5, le=600)
    # How often this replica looks for cancel requests of the executions it runs.
    cancel_poll_s: float = Field(default=0.5, gt=0, le=30)
    # How often this replica looks for queued or orphaned executions (first sweep at start).
    sweep_interval_s: float = Field(default=5.0, gt=0, le=600)
    # Executions one replica runs at once; more stay queued for other replicas or later sweeps.
    max_running_executions: int = Field(default=64, ge=1, le=10_000)

    # Fan-out: used when a run request does not say, and the ceiling for any request.
    default_concurrency: int = Field(default=50, ge=1, le=5000)
    max_concurrency: int = Field(default=5000, ge=1, le=100_000)

    # Output kept per target (beyond it: one truncation marker, then nothing).
    output_cap_bytes: int = Field(default=1_048_576, ge=1024, le=1024 * 1024 * 1024)
    output_flush_interval_s: float = Field(default=0.05, gt=0, le=10)
    output_flush_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    # Output waiting to be stored; past it, targets' channels stop being read (backpressure).
    output_buffer_bytes: int = Field(default=1_048_576, ge=65_536)
    # Live `execution.output` events waiting for the broker; older ones are dropped beyond this
    # (consumers heal gaps from storage).
    live_output_queue: int = Field(default=1000, ge=1, le=1_000_000)

    # SSH connection pool shared by every execution this replica runs.
    ssh_max_per_host: int = Field(default=4, ge=1, le=64)
    ssh_channels_per_connection: int = Field(default=8, ge=1, le=64)
    ssh_idle_timeout_s: float = Field(default=60.0, gt=0)
    # Keep the user's shell open on pooled connections between command steps (no new server
    # session per command); off: an exec session per command, as before.
    ssh_reuse_shells: bool = True
    # Credential fetch plus connection and login (or a WinRM shell), per target.
    connect_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # For steps without their own timeout; None: no limit.
    default_step_timeout_s: float | None = Field(default=3600.0, gt=0)
    # A canceled command gets TERM, then KILL (and its channel closed) after this long.
    cancel_grace_s: float = Field(default=0.5, ge=0, le=60)
    winrm_operation_timeout_s: int = Field(default=20, ge=1, le=3600)
    # Basic authentication over plain HTTP to WinRM targets: test peers only.
    allow_insecure_winrm_http: bool = False

@lru_cache
def get_settings() -> Settings:
    return Settings()
