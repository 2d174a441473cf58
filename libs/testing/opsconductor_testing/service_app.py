"""One service app under test, the way every service's tests run it: its lifespan running, an
in-process HTTP client that keeps every response body (for leak checks), tokens signed by a test
key the app trusts instead of asking the auth service, and the outbox read on demand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import MetaData, select
from starlette.applications import Starlette

from opsconductor_contracts.security import runtime_authenticator
from opsconductor_core.settings import PlatformSettings
from opsconductor_core.tokens import SigningKey, new_access_claims, sign
from opsconductor_db.database import ServiceDatabase
from opsconductor_testing.runtime import RecordingRuntime


def trust_test_key(app: Starlette, runtime: RecordingRuntime, settings: PlatformSettings,
                   signing: SigningKey) -> None:
    """Verify bearer tokens against `signing` rather than the auth service's JWKS."""

    async def jwks() -> dict[str, Any]:
        return {"keys": [signing.public_jwk]}

    app.state.authenticator = runtime_authenticator(runtime, settings, fetch_jwks=jwks)


@dataclass
class Served:
    client: httpx.AsyncClient
    bodies: list[str]  # every response body, in order


@asynccontextmanager
async def serving(app: Starlette, base_url: str) -> AsyncIterator[Served]:
    """The app with its lifespan running and a client that records every response body."""
    bodies: list[str] = []

    async def record(response: httpx.Response) -> None:
        await response.aread()
        bodies.append(response.text)

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url,
                                     event_hooks={"response": [record]}) as client:
            yield Served(client, bodies)


@dataclass
class TokenMinter:
    """Access tokens for made-up callers. Signing parses the PEM each time (~50 ms), so each
    identity is signed once."""

    signing: SigningKey
    settings: PlatformSettings
    _cache: dict[str, str] = field(default_factory=dict)

    def token(self, subject: str, *, perms: list[str], roles: list[str] | None = None,
              name: str = "olga") -> str:
        roles = roles or []
        key = json.dumps([subject, sorted(perms), sorted(roles), name])
        if key not in self._cache:
            claims = new_access_claims(subject=subject, issuer=self.settings.jwt_issuer,
                                       audience=self.settings.jwt_audience, ttl_s=300,
                                       extra={"name": name, "roles": roles, "perms": perms})
            self._cache[key] = sign(self.signing, claims)
        return self._cache[key]


class OutboxReader:
    """Mixin for a test World with `app` and `runtime`: what the service published so far. The
    relay is paused in these tests, so reading flushes it first."""

    app: Any
    runtime: RecordingRuntime

    async def events(self) -> list[dict[str, Any]]:
        while await self.app.state.relay.flush_once():
            pass
        return [p.event for p in self.runtime.published]

    async def drain(self) -> None:
        await self.events()
        self.runtime.published.clear()

    async def topics(self) -> list[str]:
        return [e["type"] for e in await self.events()]


async def database_dump(db: ServiceDatabase) -> bytes:
    """Every row of every table, plus the raw bytes of a SQLite database's files: where a leak
    check looks for secrets at rest."""
    chunks: list[bytes] = []
    async with db.engine.connect() as conn:
        metadata = MetaData()
        await conn.run_sync(metadata.reflect)
        for table in metadata.sorted_tables:
            for row in (await conn.execute(select(table))).all():
                chunks.append(repr(tuple(row)).encode())
                chunks.append(json.dumps([str(v) for v in row]).encode())
                chunks += [v for v in row if isinstance(v, bytes)]
    if db.url.startswith("sqlite"):
        path = Path(db.url.split("///", 1)[1])
        for candidate in path.parent.glob(path.name + "*"):
            chunks.append(candidate.read_bytes())
    return b"\n".join(chunks)


def assert_absent(haystack: Any, *secrets: str) -> None:
    """No secret, and no line of a multi-line secret (a key), anywhere in `haystack`."""
    if isinstance(haystack, bytes):
        text = haystack
    elif isinstance(haystack, str):
        text = haystack.encode()
    else:
        text = json.dumps(haystack, default=str).encode()
    for secret in secrets:
        assert secret.encode() not in text, "a secret leaked"
        for line in (line.strip() for line in secret.splitlines()):
            if len(line) >= 8 and not line.startswith("-----"):
                assert line.encode() not in text, "a line of a secret leaked"
