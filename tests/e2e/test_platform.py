"""`opsconductor up` as a user runs it: a real process on a real port, through the gateway."""

from __future__ import annotations

import json
import signal
import time
import uuid

import httpx

from opsconductor_platform.hosting import HOSTED_APPS
from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform

OPERATOR_PASSWORD = "operator-password-0001"


def is_problem(response: httpx.Response, status: int) -> bool:
    return (response.status_code == status
            and response.headers["content-type"].startswith("application/problem+json")
            and response.json()["status"] == status)


class TestPlatform:
    def test_admin_creates_an_operator_who_is_held_to_their_role(
            self, platform: RunningPlatform) -> None:
        admin_token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(admin_token) as admin:
            me = admin.get("/api/v1/users/me")
            assert me.status_code == 200
            assert me.json()["username"] == "admin" and "users:write" in me.json()["permissions"]
            created = admin.post("/api/v1/users", json={
                "username": "olga", "password": OPERATOR_PASSWORD, "roles": ["operator"]})
            assert created.status_code == 201, created.text
            assert OPERATOR_PASSWORD not in created.text
            olga_id = created.json()["id"]

            # 404: an id nobody has, and a resource nobody serves.
            assert is_problem(admin.get(f"/api/v1/users/{uuid.uuid4()}"), 404)
            assert is_problem(admin.get("/api/v1/nothing-here"), 404)
            # 422: wrong types and unknown fields change nothing.
            bad = admin.post("/api/v1/users", json={"username": 5, "password": [], "roles": "x",
                                                    "is_root": True})
            assert is_problem(bad, 422) and bad.json()["errors"]
            listing = admin.get("/api/v1/users").json()
            assert sorted(u["username"] for u in listing["items"]) == ["admin", "olga"]

        operator_token = platform.login("olga", OPERATOR_PASSWORD)["access_token"]
        with platform.client(operator_token) as olga:
            me = olga.get("/api/v1/users/me").json()
            assert me["roles"] == ["operator"] and "users:write" not in me["permissions"]
            # 403: no users:write, and never a role they do not hold.
            assert is_problem(olga.post("/api/v1/users", json={
                "username": "mallory", "password": "mallory-password-01", "roles": ["admin"]}), 403)
            assert is_problem(olga.patch(f"/api/v1/users/{olga_id}", json={"roles": ["admin"]}),
                              403)

        # 401: no token, a forged token, a wrong password.
        with platform.client() as anonymous:
            assert is_problem(anonymous.get("/api/v1/users/me"), 401)
            assert is_problem(anonymous.get("/api/v1/users/me",
                                            headers={"Authorization": "Bearer a.b.c"}), 401)
            wrong = anonymous.post("/api/v1/auth/login",
                                   json={"username": "olga", "password": "not-her-password"})
            assert is_problem(wrong, 401)
            assert "stack" not in wrong.text.lower() and "traceback" not in wrong.text.lower()

    def test_logout_ends_the_session_everywhere(self, platform: RunningPlatform) -> None:
        pair = platform.login("admin", ADMIN_PASSWORD)
        with platform.client(pair["access_token"]) as admin:
            assert admin.get("/api/v1/users/me").status_code == 200
            assert admin.post("/api/v1/auth/logout",
                              json={"refresh_token": pair["refresh_token"]}).status_code == 204
            assert is_problem(admin.get("/api/v1/users/me"), 401)
        with platform.client() as anonymous:
            again = anonymous.post("/api/v1/auth/refresh",
                                   json={"refresh_token": pair["refresh_token"]})
            assert is_problem(again, 401)

    def test_every_response_carries_security_headers_and_a_correlation_id(
            self, platform: RunningPlatform) -> None:
        with platform.client() as anonymous:
            response = anonymous.get("/api/v1/users/me", headers={"X-Correlation-ID": "e2e-42"})
            assert response.headers["x-correlation-id"] == "e2e-42"
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            home = anonymous.get("/")
            assert home.status_code == 200 and "OpsConductor" in home.text
            health = anonymous.get("/healthz").json()
            assert health["services"] == {a.app_id: "ok" for a in HOSTED_APPS
                                          if a.app_id != "gateway"}

    def test_ctrl_c_stops_cleanly_and_data_survives_a_restart(
            self, platform: RunningPlatform) -> None:
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            assert admin.post("/api/v1/users", json={
                "username": "kept", "password": "kept-password-0001", "roles": ["viewer"]}
            ).status_code == 201
        assert platform.stop(signal.SIGINT) == 0
        assert "OpsConductor stopped." in platform.output()

        platform.start()
        token = platform.login("kept", "kept-password-0001")["access_token"]
        with platform.client(token) as kept:
            assert kept.get("/api/v1/users/me").json()["roles"] == ["viewer"]


def login_count(platform: RunningPlatform, token: str, user_id: str) -> int:
    with platform.client(token) as client:
        return int(client.get(f"/api/v1/users/{user_id}").json()["login_count"])


class TestOutboxAcrossACrash:
    def test_an_event_committed_before_a_kill_is_delivered_once_after_restart(
            self, platform: RunningPlatform) -> None:
        first = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(first) as admin:
            admin_id = admin.get("/api/v1/users/me").json()["id"]
        deadline = time.monotonic() + 15
        while login_count(platform, first, admin_id) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert login_count(platform, first, admin_id) == 1
        platform.stop()

        # Publishing paused: the login's event commits to auth's outbox and goes no further.
        platform.start(extra_env={"OPSC_OUTBOX_PAUSED": "true"})
        platform.login("admin", ADMIN_PASSWORD)
        rows = platform.outbox_rows("auth")
        assert [topic for topic, _ in rows] == ["auth.login_succeeded"]
        assert ADMIN_PASSWORD not in json.dumps(rows)
        platform.kill()

        platform.start()
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        # Two logins before the kill, one after: exactly three, never four.
        deadline = time.monotonic() + 15
        while login_count(platform, token, admin_id) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert login_count(platform, token, admin_id) == 3
        time.sleep(1.5)
        assert login_count(platform, token, admin_id) == 3
