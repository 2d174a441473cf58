"""Fixtures for the targets service: the app with its lifespan, real signed tokens, a keyring."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from opsconductor_contracts.components import CREDENTIAL_MASTER_KEY_SECRET
from opsconductor_contracts.permissions import ALL_PERMISSIONS
from opsconductor_core.tokens import SigningKey, generate_private_pem, signing_key
from opsconductor_db.database import ServiceDatabase
from opsconductor_targets.config import Settings
from opsconductor_targets.keyring import Keyring
from opsconductor_targets.main import MIGRATIONS_DIR, create_app
from opsconductor_targets.models import Credential, Target
from opsconductor_testing.databases import migrated_database
from opsconductor_testing.runtime import RecordingRuntime
from opsconductor_testing.service_app import (
    OutboxReader,
    TokenMinter,
    assert_absent,
    database_dump,
    serving,
    trust_test_key,
)
from opsconductor_testing.winrm_peer import WinrmPeer

PASSWORD = "Sup3r-Secret-Target-Passw0rd"
OPERATOR = ["targets:read", "targets:write", "credentials:write"]
VIEWER = ["targets:read"]


@pytest.fixture(scope="session")
def signing() -> SigningKey:
    return signing_key(generate_private_pem())


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def runtime(keyring: Keyring) -> RecordingRuntime:
    return RecordingRuntime(app_id="targets",
                            secrets={CREDENTIAL_MASTER_KEY_SECRET: keyring.dumps()})


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Loopback allowed: the real sshd and WinRM peers of these tests listen on 127.0.0.x.
    return Settings(database_url=database_url, data_dir=tmp_path / "data", outbox_paused=True,
                    allow_loopback=True, tick_wait_s=60, health_timeout_s=5)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    """A migrated database without the app, for repository tests."""
    async with migrated_database(database_url, MIGRATIONS_DIR) as database:
        yield database


@dataclass
class World(OutboxReader):
    """The running app plus helpers to mint tokens, make targets and read events."""

    password = PASSWORD
    operator = OPERATOR
    viewer = VIEWER

    app: Any
    client: httpx.AsyncClient
    runtime: RecordingRuntime
    signing: SigningKey
    settings: Settings
    minter: TokenMinter
    bodies: list[str] = field(default_factory=list)  # every response body, for leak checks
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def auth(self, perms: list[str] | None = None) -> dict[str, str]:
        perms = list(ALL_PERMISSIONS) if perms is None else perms
        return {"Authorization": f"Bearer {self.minter.token(self.user_id, perms=perms)}"}

    async def create(self, perms: list[str] | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("name", f"t-{uuid.uuid4().hex[:8]}")
        body.setdefault("host", "192.0.2.10")
        body.setdefault("username", "deploy")
        response = await self.client.post("/targets", json=body, headers=self.auth(perms))
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def row(self, target_id: str) -> Target | None:
        async with self.app.state.db.transaction() as session:
            return await session.get(Target, uuid.UUID(target_id))

    async def credential_row(self, target_id: str) -> Credential | None:
        async with self.app.state.db.transaction() as session:
            return await session.scalar(
                select(Credential).where(Credential.target_id == uuid.UUID(target_id)))

    async def count_targets(self) -> int:
        async with self.app.state.db.transaction() as session:
            return len((await session.scalars(select(Target.id))).all())

    async def database_dump(self) -> bytes:
        return await database_dump(self.app.state.db)

    @staticmethod
    def assert_absent(haystack: Any, *secrets: str) -> None:
        assert_absent(haystack, *secrets)

    async def tick(self) -> dict[str, Any]:
        response = await self.client.post("/targets-health")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


WorldFactory = Callable[..., AbstractAsyncContextManager[World]]


@pytest.fixture
def make_world(settings: Settings, runtime: RecordingRuntime,
               signing: SigningKey) -> WorldFactory:
    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[World]:
        app_settings = settings.model_copy(update=overrides)
        app = create_app(runtime, app_settings)
        trust_test_key(app, runtime, app_settings, signing)
        async with serving(app, "http://targets") as served:
            yield World(app, served.client, runtime, signing, app_settings,
                        TokenMinter(signing, app_settings), bodies=served.bodies)

    return factory


@pytest.fixture
async def world(make_world: WorldFactory) -> AsyncIterator[World]:
    async with make_world() as running:
        yield running


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[WinrmPeer]:
    """The WS-Management peer over HTTPS with a self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "winrm-peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "peer.crt", tmp_path / "peer.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    peer = WinrmPeer(ssl_context=context).start()
    try:
        yield peer
    finally:
        peer.stop()
