"""Only the app's own sidecar may call it: the app API token check in the service factory."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter

from opsconductor_core.app import create_service_app
from opsconductor_core.settings import BaseServiceSettings

router = APIRouter()


@router.post("/internal/thing")
async def thing() -> dict[str, str]:
    return {"done": "yes"}


def client_for(token: str | None) -> httpx.AsyncClient:
    settings = BaseServiceSettings(app_api_token=token)
    app = create_service_app("svc", settings, routers=[router])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


class TestAppToken:
    async def test_without_the_token_nothing_but_probes_answers(self) -> None:
        async with client_for("t0ken") as client:
            for headers in ({}, {"dapr-api-token": "wrong"}, {"dapr-api-token": ""},
                            {"authorization": "Bearer t0ken"}):
                refused = await client.post("/internal/thing", headers=headers)
                assert refused.status_code == 401
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["type"].endswith("/app-token")
                assert refused.headers["x-correlation-id"]
                assert (await client.get("/metrics", headers=headers)).status_code == 401
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200

    async def test_the_sidecar_token_lets_the_call_through(self) -> None:
        async with client_for("t0ken") as client:
            done = await client.post("/internal/thing", headers={"dapr-api-token": "t0ken"})
            assert done.status_code == 200 and done.json() == {"done": "yes"}

    async def test_no_token_configured_means_no_check(self) -> None:
        async with client_for(None) as client:
            assert (await client.post("/internal/thing")).status_code == 200


class TestSettings:
    def test_dapr_mode_takes_the_token_dapr_hands_the_app(self,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("APP_API_TOKEN", "from-dapr")
        monkeypatch.setenv("OPSC_RUNTIME", "dapr")
        assert BaseServiceSettings().app_api_token == "from-dapr"
        assert BaseServiceSettings(app_api_token="explicit").app_api_token == "explicit"

    def test_embedded_mode_ignores_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("APP_API_TOKEN", "from-dapr")
        monkeypatch.delenv("OPSC_RUNTIME", raising=False)
        assert BaseServiceSettings().app_api_token is None
