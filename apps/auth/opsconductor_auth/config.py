"""Auth settings (env prefix `OPSC_AUTH_`)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from opsconductor_core.settings import BaseServiceSettings


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPSC_AUTH_", extra="ignore")

    access_ttl_s: int = Field(default=900, ge=1, le=86_400)
    refresh_ttl_s: int = Field(default=14 * 86_400, ge=60)
    # How stale the in-memory signing key may get before the secret store is read again.
    key_reload_s: float = Field(default=30.0, ge=0)
    # Extra time a retired public key stays in the JWKS beyond the last token it can have signed.
    key_retention_leeway_s: int = Field(default=60, ge=0)

    rate_limit_window_s: int = Field(default=300, ge=1)
    login_failures_per_user: int = Field(default=10, ge=1)
    login_attempts_per_address: int = Field(default=60, ge=1)

    # Introspection writes last_used_at at most this often per API token.
    api_token_touch_interval_s: int = Field(default=60, ge=0)

    @property
    def key_retention_s(self) -> int:
        """A retired key may have signed a token up to `key_reload_s` after another replica
        retired it (that replica had not re-read the secret yet); that token lives `access_ttl_s`."""
        return int(self.access_ttl_s + self.key_reload_s + self.key_retention_leeway_s)


@lru_cache
def get_settings() -> Settings:
    return Settings()
