"""Small parts with their own rules: token buckets, settings, the edge token cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsconductor_core.problems import Unauthorized
from opsconductor_core.security import Principal
from opsconductor_gateway.config import Settings
from opsconductor_gateway.edge_auth import EdgeAuthenticator
from opsconductor_gateway.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestTokenBuckets:
    def test_burst_then_refill(self):
        clock = Clock()
        buckets = TokenBuckets(2.0, 3, clock=clock)
        assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
        assert buckets.take("a") == 1
        clock.now += 0.5
        assert buckets.take("a") == 0
        assert buckets.take("a") >= 1

    def test_retry_after_reflects_the_rate(self):
        clock = Clock()
        buckets = TokenBuckets(0.1, 1, clock=clock)
        assert buckets.take("a") == 0
        assert buckets.take("a") == 10

    def test_keys_are_independent_and_zero_disables(self):
        buckets = TokenBuckets(1.0, 1, clock=Clock())
        assert buckets.take("a") == 0
        assert buckets.take("b") == 0
        assert buckets.take("a") > 0
        off = TokenBuckets(0, 1)
        assert not off.enabled
        assert all(off.take("a") == 0 for _ in range(1000))

    def test_memory_is_bounded(self):
        clock = Clock()
        buckets = TokenBuckets(1.0, 2, max_keys=100, clock=clock)
        for i in range(1000):
            buckets.take(f"10.0.{i // 256}.{i % 256}")
            clock.now += 0.001
        assert len(buckets._buckets) <= 100


class TestSettings:
    def test_lists_from_the_environment(self, monkeypatch):
        monkeypatch.setenv("OPSC_GATEWAY_SERVICES", "auth, users,targets")
        monkeypatch.setenv("OPSC_GATEWAY_CORS_ORIGINS", '["https://a.example:8443"]')
        settings = Settings()
        assert settings.services == ["auth", "users", "targets"]
        assert settings.cors_origins == ["https://a.example:8443"]

    def test_null_origin_refused_from_the_environment(self, monkeypatch):
        monkeypatch.setenv("OPSC_GATEWAY_CORS_ORIGINS", "https://a.example,null")
        with pytest.raises(ValueError, match="null"):
            Settings()

    def test_negative_limits_refused(self):
        with pytest.raises(ValueError):
            Settings(rate_per_address=-1)

    def test_frontend_dir_needs_an_index(self, tmp_path: Path):
        assert Settings(frontend_dir=tmp_path).resolved_frontend_dir() is None
        (tmp_path / "index.html").write_text("<!doctype html>")
        assert Settings(frontend_dir=tmp_path).resolved_frontend_dir() == tmp_path

    def test_default_frontend_location_is_tolerated_when_absent(self):
        resolved = Settings().resolved_frontend_dir()
        assert resolved is None or (resolved / "index.html").is_file()


class CountingAuthenticator:
    def __init__(self, principal: Principal | None) -> None:
        self.principal = principal
        self.calls = 0

    async def authenticate(self, token: str) -> Principal:
        self.calls += 1
        if self.principal is None:
            raise Unauthorized()
        return self.principal


class TestEdgeTokenCache:
    async def test_a_verified_token_is_remembered_briefly(self):
        import time

        clock = Clock()
        inner = CountingAuthenticator(Principal("u1", "alice", expires_at=int(time.time()) + 600))
        edge = EdgeAuthenticator(inner, cache_s=5, clock=clock)
        await edge.authenticate("t")
        await edge.authenticate("t")
        assert inner.calls == 1
        clock.now += 5.1
        await edge.authenticate("t")
        assert inner.calls == 2

    async def test_never_beyond_the_token_expiry(self):
        import time

        inner = CountingAuthenticator(Principal("u1", "alice", expires_at=int(time.time()) - 1))
        edge = EdgeAuthenticator(inner, cache_s=5, clock=Clock())
        await edge.authenticate("t")
        await edge.authenticate("t")
        assert inner.calls == 2

    async def test_failures_are_not_remembered(self):
        inner = CountingAuthenticator(None)
        edge = EdgeAuthenticator(inner, cache_s=5, clock=Clock())
        for _ in range(2):
            with pytest.raises(Unauthorized):
                await edge.authenticate("bad")
        assert inner.calls == 2
