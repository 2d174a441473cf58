"""/healthz and /readyz report every fronted service; /metrics comes from the core factory."""

from __future__ import annotations

import asyncio

from opsconductor_gateway.main import create_app
from opsconductor_runtime.interface import InvokeResponse


class TestHealthz:
    async def test_ok_when_every_service_answers(self, client):
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "services": {"auth": "ok", "users": "ok"}}

    async def test_degraded_when_a_service_is_not_running(self, make_client):
        async with make_client(services=["auth", "users", "targets"]) as client:
            response = await client.get("/healthz")
        assert response.status_code == 503
        assert response.json() == {"status": "degraded",
                                   "services": {"auth": "ok", "users": "ok",
                                                "targets": "unavailable"}}

    async def test_degraded_when_a_service_reports_unhealthy(self, client, users_service):
        users_service.healthy = False
        response = await client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["services"] == {"auth": "ok", "users": "unavailable"}

    async def test_a_hanging_service_is_cut_off_and_probes_run_concurrently(
            self, runtime, make_settings):
        import httpx

        real_invoke = runtime.invoke

        async def slow_invoke(app_id, method, path, **kwargs):
            if path == "/healthz":
                await asyncio.sleep(0.3 if app_id == "auth" else 5)
            return await real_invoke(app_id, method, path, **kwargs)

        runtime.invoke = slow_invoke  # type: ignore[method-assign]
        app = create_app(runtime, make_settings(health_timeout_s=0.5))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gateway") as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await client.get("/healthz")
            elapsed = loop.time() - started
        assert response.json()["services"] == {"auth": "ok", "users": "unavailable"}
        assert elapsed < 1.5

    async def test_needs_no_token_and_never_probes_itself(self, make_client, runtime):
        calls: list[str] = []

        async def recording_invoke(app_id, method, path, **kwargs):
            calls.append(app_id)
            return InvokeResponse(200, b"{}", {})

        runtime.invoke = recording_invoke  # type: ignore[method-assign]
        async with make_client(services=["gateway", "users"]) as client:
            response = await client.get("/healthz")
        assert response.status_code == 200
        assert calls == ["users"]


class TestReadyz:
    async def test_ready_when_every_service_is_ready(self, client):
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["status"] == "ready"

    async def test_unavailable_when_one_is_not(self, client, auth_service):
        auth_service.healthy = False
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable",
                                   "services": {"auth": "unavailable", "users": "ok"}}


class TestMetrics:
    async def test_requests_are_counted_by_route_template(self, client, auth):
        await client.get("/api/v1/users/me", headers=auth)
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert 'route="/api/v1/{path:path}"' in response.text
