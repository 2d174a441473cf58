"""What every response carries: security headers, CORS decisions and rate limits."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from opsconductor_gateway.config import Settings

ALLOWED_ORIGIN = "https://ops.example.com"
PROBLEM = "application/problem+json"

SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'self'; frame-ancestors 'none'; object-src 'none'; "
                                "base-uri 'none'; form-action 'self'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name


class TestSecurityHeaders:
    async def test_on_a_proxied_200(self, client, auth):
        response = await client.get("/api/v1/users/me", headers=auth)
        assert response.status_code == 200
        assert_security_headers(response)

    async def test_on_401_and_404(self, client, auth):
        unauthorized = await client.get("/api/v1/users/me")
        assert unauthorized.status_code == 401
        assert_security_headers(unauthorized)
        missing = await client.get("/api/v1/nowhere", headers=auth)
        assert missing.status_code == 404
        assert_security_headers(missing)
        outside = await client.get("/no/such/page")
        assert outside.status_code == 404
        assert_security_headers(outside)

    async def test_on_the_placeholder_page_and_health(self, client):
        assert_security_headers(await client.get("/"))
        assert_security_headers(await client.get("/healthz"))

    async def test_on_413(self, client, auth):
        response = await client.post("/api/v1/users", headers=auth, content=b"x" * 2_000_000)
        assert response.status_code == 413
        assert_security_headers(response)

    async def test_a_service_cannot_weaken_them(self, client, auth):
        response = await client.get("/api/v1/users/me", headers=auth)
        assert response.headers.get_list("x-frame-options") == ["DENY"]

    async def test_no_hsts_over_plain_http(self, client):
        response = await client.get("/")
        assert "strict-transport-security" not in response.headers

    async def test_hsts_over_https(self, make_client):
        async with make_client(scheme="https") as client:
            response = await client.get("/")
        assert response.headers["strict-transport-security"].startswith("max-age=")

    async def test_forwarded_proto_counts_only_when_trusted(self, make_client):
        async with make_client() as client:
            untrusted = await client.get("/", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in untrusted.headers
        async with make_client(trust_forwarded_proto=True) as client:
            trusted = await client.get("/", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" in trusted.headers


class TestCors:
    async def test_allowed_origin_is_echoed(self, client, auth):
        response = await client.get("/api/v1/users/me",
                                    headers={**auth, "Origin": ALLOWED_ORIGIN})
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "Origin" in response.headers.get_list("vary")
        assert "X-Correlation-ID" in response.headers["access-control-expose-headers"]

    @pytest.mark.parametrize("origin", ["https://evil.example", "null",
                                        "https://ops.example.com.evil.example",
                                        "http://ops.example.com"])
    async def test_other_origins_get_no_cors_headers(self, client, auth, origin):
        response = await client.get("/api/v1/users/me", headers={**auth, "Origin": origin})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-credentials" not in response.headers

    async def test_preflight_is_answered_at_the_edge_without_a_token(self, client,
                                                                      users_service):
        response = await client.options("/api/v1/users/me", headers={
            "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, if-match"})
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "PATCH" in response.headers["access-control-allow-methods"]
        assert "authorization" in response.headers["access-control-allow-headers"]
        assert "Origin" in response.headers.get_list("vary")
        assert_security_headers(response)
        assert users_service.calls == []

    @pytest.mark.parametrize("headers", [
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        {"Origin": "null", "Access-Control-Request-Method": "GET"},
        {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "TRACE"},
        {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "GET",
         "Access-Control-Request-Headers": "x-evil"},
    ])
    async def test_refused_preflight_is_403_without_cors_headers(self, client, users_service,
                                                                 headers):
        response = await client.options("/api/v1/users/me", headers=headers)
        assert response.status_code == 403
        assert response.headers["content-type"].startswith(PROBLEM)
        assert not [h for h in response.headers if h.startswith("access-control-")]
        assert users_service.calls == []

    async def test_no_origins_configured_means_no_cross_origin_access(self, make_client):
        async with make_client(cors_origins=[]) as client:
            response = await client.options("/api/v1/users/me", headers={
                "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "GET"})
        assert response.status_code == 403

    @pytest.mark.parametrize("origin", ["*", "null", "https://ops.example.com/app",
                                        "ops.example.com", "ftp://ops.example.com"])
    def test_settings_refuse_wildcards_null_and_non_origins(self, origin):
        with pytest.raises(ValidationError):
            Settings(cors_origins=[origin])


class TestRateLimits:
    async def test_per_address_limit_gives_429_with_retry_after(self, make_client):
        async with make_client(rate_per_address=0.5, burst_per_address=3) as client:
            statuses = [(await client.get("/healthz")).status_code for _ in range(3)]
            limited = await client.get("/")
        assert statuses == [200, 200, 200]
        assert limited.status_code == 429
        assert limited.headers["content-type"].startswith(PROBLEM)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-correlation-id"]
        assert_security_headers(limited)

    async def test_addresses_have_separate_buckets(self, make_client, runtime,
                                                   make_settings):
        from opsconductor_gateway.main import create_app

        app = create_app(runtime, make_settings(rate_per_address=0.5, burst_per_address=1))
        first = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.1", 1)),
                                  base_url="http://gateway")
        second = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.2", 1)),
                                   base_url="http://gateway")
        async with first, second:
            assert (await first.get("/")).status_code == 200
            assert (await first.get("/")).status_code == 429
            assert (await second.get("/")).status_code == 200

    async def test_limited_allowed_origin_can_read_the_429(self, make_client):
        async with make_client(rate_per_address=0.5, burst_per_address=1) as client:
            await client.get("/")
            limited = await client.get("/", headers={"Origin": ALLOWED_ORIGIN})
        assert limited.status_code == 429
        assert limited.headers["access-control-allow-origin"] == ALLOWED_ORIGIN

    async def test_per_user_limit(self, make_client, make_token, users_service):
        alice = {"Authorization": f"Bearer {make_token('alice')}"}
        bob = {"Authorization": f"Bearer {make_token('bob')}"}
        async with make_client(rate_per_user=0.5, burst_per_user=2) as client:
            ok = [(await client.get("/api/v1/users/me", headers=alice)).status_code
                  for _ in range(2)]
            limited = await client.get("/api/v1/users/me", headers=alice)
            other = await client.get("/api/v1/users/me", headers=bob)
        assert ok == [200, 200]
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert other.status_code == 200
        assert len(users_service.calls) == 3

    async def test_zero_disables_the_limits(self, make_client, auth):
        async with make_client(rate_per_address=0, rate_per_user=0) as client:
            statuses = {(await client.get("/api/v1/users/me", headers=auth)).status_code
                        for _ in range(150)}
        assert statuses == {200}
