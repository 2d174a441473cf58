"""Access control between sidecars (dapr/config.yaml) and the app API token, on real daprd.

The called app here answers with what reached it, so a test sees not only the status but also
that nothing forbidden arrived at the app in any spelling.
"""

from __future__ import annotations

import httpx
import pytest

from opsconductor_platform.dapr_mode import DaprPlatform, Sidecar
from opsconductor_platform.hosting import HOSTED_APPS
from opsconductor_runtime.dapr import DaprRuntime
from opsconductor_runtime.interface import AppUnavailable

from .conftest import InProcessApp, MakeRun, echo_app, received, sdk_pointed_at

pytestmark = pytest.mark.timeout(300)

# Ways to write an internal route so that a naive prefix check would read it as a public one.
INTERNAL_IN_DISGUISE = [
    "internal/users/abc/identity",
    "/internal/users/abc/identity",
    "users/../internal/users/abc/identity",
    "users/%2e%2e/internal/users/abc/identity",
    "users/..%2Finternal/users/abc/identity",
    "users%2F..%2Finternal/users/abc/identity",
    "users%2f..%2finternal%2fusers%2fabc%2fidentity",
    "INTERNAL/users/abc/identity",
    "users/x/../../internal/users/abc/identity",
]


async def call(sidecar: Sidecar, target: str, method: str, route: str) -> httpx.Response:
    """Invoke `target` through `sidecar` exactly as written: the raw path is sent as is (a
    client would otherwise resolve the dot segments before the sidecar sees them)."""
    raw_path = f"/v1.0/invoke/{target}/method/{route}"
    async with httpx.AsyncClient(timeout=30) as client:
        request = client.build_request("GET", f"http://127.0.0.1:{sidecar.ports.http}/",
                                       headers={"dapr-api-token": sidecar.dapr_token})
        request.method = method
        request.url = request.url.copy_with(raw_path=raw_path.encode())
        return await client.send(request)


async def serve_users_echo(run: DaprPlatform) -> tuple[Sidecar, InProcessApp]:
    app = InProcessApp(echo_app())
    await app.__aenter__()
    sidecar = await run.start_sidecar("users", app_port=app.port)
    await run.wait_healthy(sidecar, app.port)
    return sidecar, app


class TestPolicy:
    async def test_an_app_id_without_a_policy_is_refused_everything(self,
                                                                    dapr_run: MakeRun) -> None:
        run = await dapr_run()
        _, app = await serve_users_echo(run)
        intruder = await run.start_sidecar("intruder")
        gateway = await run.start_sidecar("gateway")
        try:
            await run.wait_healthy(intruder)
            await run.wait_healthy(gateway)
            # The same route is open to the gateway: the refusal is about who asks.
            assert (await call(gateway, "users", "GET", "users/me")).status_code == 200
            for method, route in [("GET", "users/me"), ("GET", "healthz"),
                                  ("POST", "internal/credentials/verify")]:
                refused = await call(intruder, "users", method, route)
                assert refused.status_code == 403, (route, refused.text)
                assert "access control policy has denied access" in refused.text
        finally:
            await app.__aexit__()

    @pytest.mark.parametrize("route", INTERNAL_IN_DISGUISE)
    async def test_the_gateway_never_reaches_an_internal_route(self, dapr_run: MakeRun,
                                                              route: str) -> None:
        run = await dapr_run()
        _, app = await serve_users_echo(run)
        gateway = await run.start_sidecar("gateway")
        try:
            await run.wait_healthy(gateway)
            response = await call(gateway, "users", "GET", route)
            if response.status_code != 403:
                # Let through only as what it is: a path the app does not serve as internal.
                seen = received(response.content)
                assert not seen["path"].lower().startswith("/internal"), (route, seen)
        finally:
            await app.__aexit__()

    async def test_auth_reaches_exactly_the_two_user_routes_it_needs(self,
                                                                     dapr_run: MakeRun) -> None:
        run = await dapr_run()
        _, app = await serve_users_echo(run)
        auth = await run.start_sidecar("auth")
        try:
            await run.wait_healthy(auth)
            allowed = [("POST", "internal/credentials/verify"),
                       ("GET", "internal/users/0b9a/identity")]
            for method, route in allowed:
                response = await call(auth, "users", method, route)
                assert response.status_code == 200, (route, response.text)
                assert received(response.content)["path"] == "/" + route
            refused = [("GET", "internal/credentials/verify"), ("GET", "users/me"),
                       ("GET", "internal/users/0b9a/sessions"),
                       ("GET", "internal/users/a/b/identity"),
                       ("DELETE", "internal/users/0b9a/identity")]
            for method, route in refused:
                assert (await call(auth, "users", method, route)).status_code == 403, route
        finally:
            await app.__aexit__()

    async def test_a_refusal_reaches_the_caller_as_app_unavailable(self,
                                                                   dapr_run: MakeRun) -> None:
        run = await dapr_run()
        _, app = await serve_users_echo(run)
        gateway = await run.start_sidecar("gateway")
        try:
            await run.wait_healthy(gateway)
            with sdk_pointed_at(gateway):
                runtime = DaprRuntime("gateway")
                try:
                    ok = await runtime.invoke("users", "GET", "/users/me")
                    assert ok.status == 200
                    with pytest.raises(AppUnavailable, match="ERR_DIRECT_INVOKE"):
                        await runtime.invoke("users", "GET", "/internal/users/x/identity")
                    with pytest.raises(AppUnavailable):
                        await runtime.invoke("nobody-by-this-name", "GET", "/healthz",
                                             timeout_s=5)
                finally:
                    await runtime.close()
        finally:
            await app.__aexit__()


class TestAppToken:
    async def test_only_the_sidecar_may_call_an_app_directly(self, dapr_run: MakeRun) -> None:
        """A real service process (users), started as Dapr mode starts it."""
        run = await dapr_run()
        users = next(a for a in HOSTED_APPS if a.app_id == "users")
        gateway = await run.start_sidecar("gateway")
        sidecar = (await run.start_app(users)).sidecar
        port = sidecar.ports.app
        await run.wait_healthy(gateway)
        assert sidecar.app_token

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as direct:
            for headers in ({}, {"dapr-api-token": "guessed"}, {"dapr-api-token": ""}):
                refused = await direct.get("/openapi.json", headers=headers)
                assert refused.status_code == 401
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert refused.json()["type"].endswith("/app-token")
                assert "x-correlation-id" in refused.headers
                refused = await direct.post("/internal/credentials/verify", headers=headers,
                                            json={"username": "admin", "password": "x"})
                assert refused.status_code == 401
                assert refused.json()["type"].endswith("/app-token")
            # Probes stay open.
            assert (await direct.get("/healthz")).status_code == 200
        # Through the sidecars the token is added by the users sidecar, never by the caller.
        through = await call(gateway, "users", "GET", "openapi.json")
        assert through.status_code == 200 and "paths" in through.json()
