"""Embedded mode: every app in one process on the embedded runtime, the gateway on one port."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from opsconductor_contracts.components import (
    CREDENTIAL_MASTER_KEY_SECRET,
    EXECUTION_SECRETS_KEY_SECRET,
    JWT_SIGNING_KEY_SECRET,
)
from opsconductor_core.tokens import generate_private_pem
from opsconductor_runtime.embedded import EmbeddedHost
from opsconductor_runtime.embedded.secrets import ensure_secret_file
from opsconductor_targets.keyring import Keyring, new_keyring_secret

log = logging.getLogger("opsconductor.platform")

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class HostedApp:
    """An app the platform hosts; `has_database` apps get migrations and a SQLite file."""

    app_id: str
    package: str
    has_database: bool = True

    def module(self, name: str) -> Any:
        return import_module(f"{self.package}.{name}")

    @property
    def migrations_dir(self) -> Path:
        return Path(self.module("main").__file__).resolve().parents[1] / "migrations"

    def database_url(self) -> str:
        settings = self.module("config").Settings()
        return str(settings.effective_database_url(self.app_id))

    def create(self, runtime: Any) -> FastAPI:
        app: FastAPI = self.module("main").create_app(runtime=runtime)
        return app


# Start order matters: users bootstraps the admin before anyone can log in; the gateway last.
HOSTED_APPS: tuple[HostedApp, ...] = (
    HostedApp("users", "opsconductor_users"),
    HostedApp("auth", "opsconductor_auth"),
    HostedApp("targets", "opsconductor_targets"),
    HostedApp("jobs", "opsconductor_jobs"),
    HostedApp("executor", "opsconductor_executor"),
    HostedApp("gateway", "opsconductor_gateway", has_database=False),
)

SECRET_FACTORIES: dict[str, Callable[[], str]] = {
    JWT_SIGNING_KEY_SECRET: generate_private_pem,
    # A keyring, so `opsconductor keys rotate` can add keys while the platform runs.
    CREDENTIAL_MASTER_KEY_SECRET: new_keyring_secret,
    EXECUTION_SECRETS_KEY_SECRET: lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
}


def components_dir() -> Path:
    return Path(os.environ.get("OPSC_COMPONENTS_DIR", REPO_ROOT / "components"))


def prepare_data_dir(data_dir: Path) -> Path:
    """The data dir holds keys and databases: owner-only, and every app reads it from the env."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    os.environ["OPSC_DATA_DIR"] = str(data_dir)
    ensure_secret_file(data_dir / "secrets.json", SECRET_FACTORIES)
    return data_dir


def rotate_signing_key(data_dir: Path) -> str:
    """Writes a new JWT signing key; auth picks it up and keeps the old one in its JWKS."""
    from opsconductor_core.tokens import key_id
    from opsconductor_runtime.embedded.secrets import write_secret_file

    path = prepare_data_dir(data_dir) / "secrets.json"
    current = json.loads(path.read_text())
    current[JWT_SIGNING_KEY_SECRET] = generate_private_pem()
    write_secret_file(path, current)
    return key_id(current[JWT_SIGNING_KEY_SECRET])


def rotate_credential_master_key(data_dir: Path) -> tuple[str, int]:
    """Adds a new active master key to the keyring in the secret file.

    The running targets service re-reads the secret on its next health tick and re-wraps every
    credential's data key under the new key in batches; older keys stay in the ring so rows not
    yet re-wrapped keep opening. Returns (new key id, keys in the ring).
    """
    from opsconductor_runtime.embedded.secrets import write_secret_file

    path = prepare_data_dir(data_dir) / "secrets.json"
    current = json.loads(path.read_text())
    keyring = Keyring.parse(current[CREDENTIAL_MASTER_KEY_SECRET]).rotated()
    current[CREDENTIAL_MASTER_KEY_SECRET] = keyring.dumps()
    write_secret_file(path, current)
    return keyring.active, len(keyring.keys)


@asynccontextmanager
async def embedded_platform(data_dir: Path) -> AsyncIterator[FastAPI]:
    """Yields the gateway app with every app started; stops them all on exit."""
    data_dir = prepare_data_dir(data_dir)
    os.environ.setdefault("OPSC_GATEWAY_SERVICES",
                          json.dumps([a.app_id for a in HOSTED_APPS if a.app_id != "gateway"]))
    host = EmbeddedHost(data_dir, components_dir=components_dir())
    async with AsyncExitStack() as stack:
        await host.open()
        stack.push_async_callback(host.close)
        apps: dict[str, FastAPI] = {}
        for hosted in HOSTED_APPS:
            apps[hosted.app_id] = hosted.create(host.runtime_for(hosted.app_id))
            host.register(hosted.app_id, apps[hosted.app_id])
        for hosted in HOSTED_APPS:
            app = apps[hosted.app_id]
            await stack.enter_async_context(app.router.lifespan_context(app))
        await host.start_delivery()
        yield apps["gateway"]
