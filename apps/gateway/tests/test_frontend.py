"""The web UI: served from the build when present, a placeholder page otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

INDEX = "<!doctype html><html><body><div id=root></div><script src=/assets/app.js></script>"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "assets" / "app.js").write_text("console.log('ui')")
    return root


class TestBuiltFrontend:
    async def test_root_serves_index(self, make_client, dist):
        async with make_client(frontend_dir=dist) as client:
            response = await client.get("/")
        assert response.status_code == 200
        assert response.text == INDEX
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["x-frame-options"] == "DENY"

    async def test_assets_are_served(self, make_client, dist):
        async with make_client(frontend_dir=dist) as client:
            response = await client.get("/assets/app.js")
        assert response.status_code == 200
        assert response.text == "console.log('ui')"
        assert response.headers["x-content-type-options"] == "nosniff"

    @pytest.mark.parametrize("path", ["/targets", "/targets/42/health", "/executions/abc"])
    async def test_client_routes_fall_back_to_index(self, make_client, dist, path):
        async with make_client(frontend_dir=dist) as client:
            response = await client.get(path)
        assert response.status_code == 200
        assert response.text == INDEX

    async def test_a_missing_file_is_404_not_index(self, make_client, dist):
        async with make_client(frontend_dir=dist) as client:
            response = await client.get("/assets/missing.js")
        assert response.status_code == 404

    @pytest.mark.parametrize("path", ["/api", "/api/", "/api/v2/users", "/api/v1",
                                      "/dapr/subscribe", "/internal/x"])
    async def test_api_and_runtime_paths_never_get_html(self, make_client, dist, path):
        async with make_client(frontend_dir=dist) as client:
            response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_api_still_routes_with_a_frontend(self, make_client, dist, auth):
        async with make_client(frontend_dir=dist) as client:
            response = await client.get("/api/v1/users/me", headers=auth)
            health = await client.get("/healthz")
        assert response.json()["path"] == "/users/me"
        assert health.json()["status"] == "ok"

    async def test_traversal_does_not_escape_the_build(self, make_client, dist, raw_call):
        (dist.parent / "secret.txt").write_text("top secret")
        async with make_client(frontend_dir=dist) as client:
            response = await client.get("/assets/%2e%2e/%2e%2e/secret.txt")
        assert "top secret" not in response.text


class TestPlaceholder:
    async def test_root_explains_the_ui_is_not_built(self, client):
        response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "OpsConductor — the web UI is not built yet; the API is at /api/v1" in response.text

    async def test_is_valid_under_the_csp(self, client):
        response = await client.get("/")
        lowered = response.text.lower()
        assert "<script" not in lowered
        assert "<style" not in lowered
        assert "style=" not in lowered
        assert "default-src 'self'" in response.headers["content-security-policy"]

    async def test_other_pages_are_404(self, client):
        response = await client.get("/targets")
        assert response.status_code == 404
