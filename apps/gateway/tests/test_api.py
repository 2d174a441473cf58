"""The gateway as a client sees it: routing, edge authentication, forwarding, errors."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from opsconductor_contracts.components import REVOKED_JTI_PREFIX, STATE_STORE
from opsconductor_core.tokens import generate_private_pem, signing_key

PROBLEM = "application/problem+json"
CLIENT_ADDRESS = "203.0.113.7"
API_TOKEN = "opsc_apitoken_valid"

ALL_SERVICES = ["auth", "users", "targets", "jobs", "executor", "scheduler", "audit"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    return body


class TestRouting:
    @pytest.mark.parametrize(("segment", "app_id"), [
        ("users", "users"), ("roles", "users"), ("targets", "targets"), ("jobs", "jobs"),
        ("executions", "executor"), ("schedules", "scheduler"), ("audit", "audit"),
        ("auth", "auth"),
    ])
    async def test_first_segment_picks_the_service_and_the_prefix_is_stripped(
            self, segment, app_id, runtime, make_client, auth, fake_services):
        fakes = fake_services(ALL_SERVICES)
        async with make_client() as client:
            response = await client.get(f"/api/v1/{segment}/abc/def", headers=auth)
        assert response.status_code == 200
        assert response.json()["app_id"] == app_id
        assert response.json()["path"] == f"/{segment}/abc/def"
        assert [c["path"] for c in fakes[app_id].calls] == [f"/{segment}/abc/def"]

    async def test_query_string_and_body_pass_through(self, client, auth, users_service):
        response = await client.post(
            "/api/v1/users/search?tag=a&tag=b&q=two%20words", headers=auth,
            content=b'{"name": "x\xc3\xa9"}', )
        echoed = response.json()
        assert echoed["method"] == "POST"
        assert echoed["query"] == [["tag", "a"], ["tag", "b"], ["q", "two words"]]
        assert echoed["body"] == '{"name": "xé"}'

    @pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
    async def test_every_method_is_forwarded(self, client, auth, users_service, method):
        response = await client.request(method, "/api/v1/users/42", headers=auth)
        assert response.status_code == 200
        assert users_service.calls[-1]["method"] == method

    async def test_percent_encoding_in_a_segment_is_kept(self, client, auth, users_service):
        response = await client.get("/api/v1/users/a%3Fb%20c", headers=auth)
        assert response.status_code == 200
        assert users_service.calls[-1]["raw_path"] == "/users/a%3Fb%20c"
        assert users_service.calls[-1]["query"] == []

    async def test_status_body_and_selected_headers_come_back(self, client, auth):
        response = await client.post("/api/v1/users/made", headers=auth, json={})
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        assert response.headers["etag"] == '"v1"'
        # The service's own path becomes the public one.
        assert response.headers["location"] == "/api/v1/users/123"
        assert "x-internal-secret" not in response.headers

    @pytest.mark.parametrize("path", ["/api/v1/nothing/here", "/api/v1/", "/api/v1/USERS/me",
                                      "/api/v1", "/api/unknown"])
    async def test_unknown_api_path_is_a_404_problem(self, client, auth, path):
        assert_problem(await client.get(path, headers=auth), 404)

    async def test_mapped_service_that_is_not_running_gives_503(self, client, auth):
        body = assert_problem(await client.get("/api/v1/targets", headers=auth), 503)
        assert body["detail"] == "The targets service is unavailable"

    async def test_a_service_that_times_out_gives_504(self, client, auth, runtime):
        async def hang(app_id, method, path, **kwargs):
            if app_id == "users":
                raise TimeoutError()
            return await real(app_id, method, path, **kwargs)

        real = runtime.invoke
        runtime.invoke = hang
        assert_problem(await client.get("/api/v1/users/me", headers=auth), 504)

    async def test_an_unexpected_runtime_failure_gives_502_with_edge_headers(
            self, make_client, auth, runtime):
        async def broken(app_id, method, path, **kwargs):
            if app_id == "users":
                raise RuntimeError("adapter bug")
            return await real(app_id, method, path, **kwargs)

        real = runtime.invoke
        runtime.invoke = broken
        async with make_client() as client:
            response = await client.get("/api/v1/users/me",
                                        headers={**auth, "X-Correlation-ID": "c-502"})
        body = assert_problem(response, 502)
        assert "adapter bug" not in body["detail"]
        assert response.headers["x-correlation-id"] == "c-502"
        assert response.headers["x-frame-options"] == "DENY"


class TestPathTricks:
    @pytest.mark.parametrize("raw_path", [
        b"/api/v1/users/..%2Finternal/x",
        b"/api/v1/users%2F..%2Finternal",
        b"/api/v1/users%2fme",
        b"/api/v1/users/../internal/api-tokens/introspect",
        b"/api/v1/users/%2e%2e/internal",
        b"/api/v1/users/%2E%2E/internal",
        b"/api/v1//internal/x",
        b"/api/v1/users//me",
        b"/api/v1/users\\..\\internal",
        b"/api/v1/users/%5c..%5cinternal",
        b"/api/v1/users/%252e%252e/internal",
        b"/api/v1/internal/api-tokens/introspect",
        b"/api/v1/internal",
    ])
    async def test_refused_and_never_forwarded(self, raw_call, users_service, auth_service,
                                               auth, raw_path):
        status, headers, _ = await raw_call("POST", raw_path, headers=auth)
        assert status in (400, 404)
        assert headers["content-type"].startswith(PROBLEM)
        assert users_service.calls == []
        assert auth_service.calls == []

    async def test_internal_is_refused_even_with_a_valid_token(self, client, auth, auth_service):
        assert_problem(await client.post("/api/v1/internal/api-tokens/introspect", headers=auth,
                                         json={"token": API_TOKEN}), 404)
        assert auth_service.calls == []


class TestEdgeAuthentication:
    async def test_no_token_is_401_and_nothing_is_forwarded(self, client, users_service):
        response = await client.get("/api/v1/users/me")
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert users_service.calls == []

    @pytest.mark.parametrize("value", ["Bearer garbage.not.jwt", "Bearer abc", "Basic dXNlcjpwdw==",
                                       "Bearer ", "Bearer eyJhbGciOiJub25lIn0.e30."])
    async def test_garbage_token_is_401(self, client, users_service, value):
        assert_problem(await client.get("/api/v1/users/me", headers={"Authorization": value}), 401)
        assert users_service.calls == []

    async def test_expired_token_is_401(self, client, make_token, users_service):
        token = make_token(ttl_s=-30)
        response = await client.get("/api/v1/users/me", headers=bearer(token))
        assert_problem(response, 401)
        assert users_service.calls == []

    async def test_token_for_another_audience_is_401(self, client, make_token):
        token = make_token(audience="someone-else")
        response = await client.get("/api/v1/users/me", headers=bearer(token))
        assert_problem(response, 401)

    async def test_token_signed_by_an_unknown_key_is_401(self, client, make_token):
        token = make_token(signer=signing_key(generate_private_pem()))
        response = await client.get("/api/v1/users/me", headers=bearer(token))
        assert_problem(response, 401)

    async def test_valid_token_is_forwarded_with_its_authorization_header(
            self, client, auth, users_service):
        response = await client.get("/api/v1/users/me", headers=auth)
        assert response.status_code == 200
        assert users_service.calls[0]["headers"]["authorization"] == auth["Authorization"]

    async def test_api_token_is_introspected(self, client, users_service):
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200
        assert_problem(await client.get("/api/v1/users/me",
                                        headers={"Authorization": "Bearer opsc_revoked"}), 401)

    @pytest.mark.parametrize(("method", "path"), [("POST", "/api/v1/auth/login"),
                                                  ("POST", "/api/v1/auth/refresh"),
                                                  ("GET", "/api/v1/auth/jwks")])
    async def test_public_auth_routes_need_no_token(self, client, method, path):
        response = await client.request(method, path, json={"username": "a", "password": "b"}
                                        if method == "POST" else None)
        assert response.status_code == 200

    async def test_other_auth_routes_need_a_token(self, client, auth_service):
        assert_problem(await client.post("/api/v1/auth/logout", json={}), 401)
        assert_problem(await client.get("/api/v1/auth/login"), 401)
        assert auth_service.calls == []

    async def test_revoked_token_is_401_once_the_cache_expires(
            self, make_client, runtime, make_token):
        token = make_token()
        payload = token.split(".")[1]
        jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        await runtime.save_state(STATE_STORE, REVOKED_JTI_PREFIX + jti, b"1")
        async with make_client(auth_cache_s=0) as client:
            response = await client.get("/api/v1/users/me", headers=bearer(token))
        assert_problem(response, 401)


class TestForwardedHeaders:
    async def test_x_forwarded_for_is_the_socket_address(self, client, auth, users_service):
        await client.get("/api/v1/users/me", headers={
            **auth, "X-Forwarded-For": "10.0.0.1", "X-Forwarded-Host": "evil.example",
            "X-Real-IP": "10.0.0.2", "Cookie": "session=abc", "X-Forwarded-Proto": "https"})
        received = users_service.calls[0]["headers"]
        assert received["x-forwarded-for"] == CLIENT_ADDRESS
        assert received["x-forwarded-proto"] == "http"
        assert "x-forwarded-host" not in received
        assert "x-real-ip" not in received
        assert "cookie" not in received

    async def test_forwarded_proto_is_trusted_only_when_configured(
            self, make_client, auth, users_service):
        async with make_client(trust_forwarded_proto=True) as client:
            await client.get("/api/v1/users/me", headers={**auth, "X-Forwarded-Proto": "https"})
        assert users_service.calls[0]["headers"]["x-forwarded-proto"] == "https"

    async def test_conditional_and_content_headers_are_forwarded(self, client, auth,
                                                                 users_service):
        await client.put("/api/v1/users/1", content=b"{}", headers={
            **auth, "Content-Type": "application/json", "If-Match": '"v1"',
            "Accept": "application/json", "Last-Event-ID": "17"})
        received = users_service.calls[0]["headers"]
        assert received["content-type"] == "application/json"
        assert received["if-match"] == '"v1"'
        assert received["last-event-id"] == "17"

    async def test_correlation_id_is_echoed_and_forwarded(self, client, auth, users_service):
        response = await client.get("/api/v1/users/me",
                                    headers={**auth, "X-Correlation-ID": "req-abc-123"})
        assert response.headers["x-correlation-id"] == "req-abc-123"
        assert users_service.calls[0]["headers"]["x-correlation-id"] == "req-abc-123"

    async def test_a_correlation_id_is_minted_when_absent(self, client, auth, users_service):
        response = await client.get("/api/v1/users/me", headers=auth)
        minted = response.headers["x-correlation-id"]
        assert minted
        assert users_service.calls[0]["headers"]["x-correlation-id"] == minted

    async def test_errors_carry_the_correlation_id(self, client):
        response = await client.get("/api/v1/users/me", headers={"X-Correlation-ID": "c-401"})
        assert response.headers["x-correlation-id"] == "c-401"


class TestOpenApi:
    async def test_index_needs_a_token(self, client):
        assert_problem(await client.get("/api/v1/openapi"), 401)
        assert_problem(await client.get("/api/v1/openapi/users.json"), 401)

    async def test_index_links_each_service(self, client, auth):
        response = await client.get("/api/v1/openapi", headers=auth)
        assert response.json() == {"auth": "/api/v1/openapi/auth.json",
                                   "users": "/api/v1/openapi/users.json"}

    async def test_document_is_served_under_the_public_prefix_without_internal_routes(
            self, client, auth):
        response = await client.get("/api/v1/openapi/auth.json", headers=auth)
        assert response.status_code == 200
        document = response.json()
        assert document["servers"] == [{"url": "/api/v1"}]
        assert "/auth/jwks" in document["paths"]
        assert not [p for p in document["paths"] if p.startswith(("/internal", "/dapr"))]

    async def test_unknown_service_is_404(self, client, auth):
        assert_problem(await client.get("/api/v1/openapi/nope.json", headers=auth), 404)
