"""Gateway settings (env prefix `OPSC_GATEWAY_`). The gateway is stateless: no database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from opsconductor_core.settings import BaseServiceSettings

DEFAULT_CSP = ("default-src 'self'; frame-ancestors 'none'; object-src 'none'; "
               "base-uri 'none'; form-action 'self'")

# <repo>/apps/gateway/opsconductor_gateway/config.py -> <repo>; absent when installed as a wheel.
_REPO_FRONTEND = Path(__file__).resolve().parents[3] / "frontend" / "dist"


def _split(value: object) -> object:
    """Accept a JSON list or a comma-separated string from the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPSC_GATEWAY_", extra="ignore")

    # App-ids whose health the gateway aggregates (the platform passes the apps it hosts).
    services: Annotated[list[str], NoDecode] = ["auth", "users"]
    # Token buckets held in memory by each replica: the effective limit scales with replicas.
    # Rates are requests per second (a rate of 0 disables that limit); bursts are requests.
    rate_per_address: float = 50.0
    burst_per_address: int = 100
    rate_per_user: float = 20.0
    burst_per_user: int = 60
    # Exact origins allowed to call the API cross-origin (scheme://host[:port]).
    cors_origins: Annotated[list[str], NoDecode] = []
    frontend_dir: Path | None = None
    # Honour X-Forwarded-Proto from a TLS-terminating proxy in front of the gateway.
    trust_forwarded_proto: bool = False
    upstream_timeout_s: float = 30.0
    health_timeout_s: float = 2.0
    # A verified bearer token is remembered this long at the edge (services verify every call,
    # including the deny-list, so this only saves repeated signature checks here). 0 disables.
    auth_cache_s: float = 5.0
    content_security_policy: str = DEFAULT_CSP
    # Live output (SSE). Messages a connection may have waiting before it is marked for resync
    # (a slow reader is then served from storage and never holds up delivery to the others).
    sse_queue_size: int = 2000
    # Quiet this long: read storage once (heals best-effort output events that were lost); the
    # wait doubles while the stream stays quiet, up to sse_idle_poll_max_s.
    sse_idle_poll_s: float = 2.0
    sse_idle_poll_max_s: float = 10.0
    sse_ping_s: float = 15.0
    # Stored messages per read (an output chunk holds up to 64 KiB).
    sse_page_size: int = 200
    # A sequence number missing from storage while later ones exist is waited for this long
    # (its transaction may still be committing), then skipped (it may never have committed).
    sse_hole_grace_s: float = 2.0
    # Token the runtime presents (header dapr-api-token) when it delivers events to the gateway;
    # defaults to the sidecar's APP_API_TOKEN in Dapr mode. Without one, only in-process
    # deliveries (the embedded host) are accepted.
    delivery_token: str | None = Field(default=None, repr=False)

    @field_validator("services", "cors_origins", mode="before")
    @classmethod
    def _from_env_text(cls, value: object) -> object:
        return _split(value)

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        # The gateway never probes itself (that would recurse through its own /healthz).
        return [s for s in dict.fromkeys(v.strip() for v in value) if s and s != "gateway"]

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        origins: list[str] = []
        for raw in value:
            origin = raw.strip().rstrip("/")
            if origin in ("*", "null"):
                raise ValueError(f"{origin!r} is not allowed in cors_origins; list exact origins")
            parts = urlsplit(origin)
            if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
                    or parts.query or parts.fragment or parts.username or parts.password):
                raise ValueError(f"{raw!r} is not an origin (scheme://host[:port])")
            origins.append(origin.lower())
        return origins

    @field_validator("rate_per_address", "rate_per_user", "burst_per_address", "burst_per_user",
                     "upstream_timeout_s", "health_timeout_s", "auth_cache_s", "sse_hole_grace_s")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("sse_queue_size", "sse_idle_poll_s", "sse_idle_poll_max_s", "sse_ping_s",
                     "sse_page_size")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    def resolved_frontend_dir(self) -> Path | None:
        """The built frontend to serve, or None (then `/` shows a placeholder page)."""
        candidate = self.frontend_dir if self.frontend_dir is not None else _REPO_FRONTEND
        return candidate if (candidate / "index.html").is_file() else None
