"""Settings base: every service reads its own `OPSC_<SVC>_*` variables plus the shared `OPSC_*` ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder")


class PlatformSettings(BaseSettings):
    """Values every service shares (env prefix `OPSC_`)."""

    model_config = SettingsConfigDict(env_prefix="OPSC_", extra="ignore")

    profile: Literal["dev", "prod"] = "dev"
    data_dir: Path = Path(".data")
    runtime: Literal["embedded", "dapr"] = "embedded"
    jwt_issuer: str = "opsconductor"
    jwt_audience: str = "opsconductor-api"
    log_level: str = "INFO"
    max_body_bytes: int = 1_048_576
    # Maintenance switch: events stay in each service's outbox until publishing resumes.
    outbox_paused: bool = False


class _SharedEnvSource(EnvSettingsSource):
    """The shared `OPSC_*` values (data dir, profile, issuer...) reach every service."""

    def __call__(self) -> dict[str, Any]:
        shared = PlatformSettings.model_fields
        return {k: v for k, v in super().__call__().items() if k in shared}


class BaseServiceSettings(PlatformSettings):
    """Base for `Settings` in each app; subclasses set `env_prefix="OPSC_<SVC>_"`.

    A service-prefixed variable wins over the shared one (`OPSC_USERS_LOG_LEVEL` over
    `OPSC_LOG_LEVEL`)."""

    database_url: str = ""
    app_api_token: str | None = Field(default=None, repr=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared = _SharedEnvSource(settings_cls, env_prefix="OPSC_")
        return init_settings, env_settings, shared, dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _sidecar_app_token(self) -> BaseServiceSettings:
        # Dapr hands the app its token in APP_API_TOKEN (the sidecar sends it back on every
        # call); a service-prefixed value still wins. Embedded mode never reads it.
        if self.app_api_token is None and self.runtime == "dapr":
            self.app_api_token = os.environ.get("APP_API_TOKEN") or None
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> BaseServiceSettings:
        if self.profile == "prod":
            for name, value in self:
                if isinstance(value, str) and any(m in value.lower() for m in PLACEHOLDER_MARKERS):
                    raise ValueError(f"{name} holds a placeholder value; refusing to start in prod")
        return self

    def sqlite_url(self, service: str) -> str:
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    def effective_database_url(self, service: str) -> str:
        return self.database_url or self.sqlite_url(service)
