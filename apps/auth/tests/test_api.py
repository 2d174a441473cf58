"""The auth HTTP surface as a caller sees it: login, refresh, logout, JWKS, API tokens."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import update

from opsconductor_auth.models import ApiToken, RefreshToken
from opsconductor_contracts.clients.auth import AuthClient
from opsconductor_contracts.components import (
    JWT_SIGNING_KEY_SECRET,
    RATE_LIMIT_PREFIX,
    REVOKED_JTI_PREFIX,
    STATE_STORE,
)
from opsconductor_core.problems import ServiceUnavailable
from opsconductor_core.tokens import key_id
from opsconductor_testing.runtime import RecordingRuntime

PROBLEM = "application/problem+json"


def _past() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=1)


class TestLogin:
    async def test_valid_credentials_get_a_token_pair(self, auth):
        alice = auth.users.add("alice", roles=("operator",))
        response = await auth.login("alice")

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 900
        assert body["refresh_token"].count(".") == 0  # opaque, not a JWT

        header, claims = auth.decode(body["access_token"])
        assert header["alg"] == "RS256"
        assert header["kid"] == key_id(auth.private_pem())
        assert claims["iss"] == "opsconductor"
        assert claims["aud"] == "opsconductor-api"
        assert claims["sub"] == alice.id
        assert claims["name"] == "alice"
        assert claims["roles"] == ["operator"]
        assert claims["perms"] == alice.permissions
        assert claims["exp"] - claims["iat"] == 900
        assert claims["nbf"] <= time.time() + 1
        assert claims["jti"]
        assert await auth.protected(body["access_token"]) == 200

    @pytest.mark.parametrize("case", ["unknown user", "wrong password", "disabled"])
    async def test_every_bad_login_gets_the_same_401(self, auth, case):
        auth.users.add("alice")
        auth.users.add("carol", active=False)
        username, password = {"unknown user": ("mallory", auth.password),
                              "wrong password": ("alice", "not the password"),
                              "disabled": ("carol", auth.password)}[case]

        response = await auth.login(username, password)

        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["detail"] == "Invalid username or password"
        assert "access_token" not in response.text

    async def test_success_and_failure_are_announced_without_the_password(self, auth,
                                                                          no_secret_in):
        alice = auth.users.add("alice")
        await auth.login("alice", "wrong guess")
        await auth.tokens("alice")

        events = await auth.drained()
        by_topic = {e["type"]: e for e in events}
        assert by_topic["auth.login_failed"]["data"]["username"] == "alice"
        assert by_topic["auth.login_failed"]["data"]["reason"] == "invalid_credentials"
        assert by_topic["auth.login_succeeded"]["data"]["user_id"] == alice.id
        assert by_topic["auth.login_succeeded"]["actor"] == alice.id
        no_secret_in(auth, events)

    async def test_users_service_down_is_503_not_401(self, auth):
        auth.users.add("alice")
        del auth.runtime.apps["users"]
        response = await auth.login("alice")
        assert response.status_code == 503

    async def test_without_a_signing_key_login_waits_for_one(self, make_auth):
        harness = await make_auth()
        pem = harness.runtime.secrets.pop(JWT_SIGNING_KEY_SECRET)
        fresh = await make_auth(runtime=harness.runtime, users=harness.users)
        fresh.users.add("alice")

        assert (await fresh.login("alice")).status_code == 503
        assert (await fresh.client.get("/readyz")).status_code == 503

        fresh.runtime.secrets[JWT_SIGNING_KEY_SECRET] = pem
        assert (await fresh.login("alice")).status_code == 200
        assert (await fresh.client.get("/readyz")).status_code == 200


class TestRefresh:
    async def test_exchanges_the_refresh_token_for_a_new_pair(self, auth):
        auth.users.add("alice")
        first = await auth.tokens("alice")

        response = await auth.client.post("/auth/refresh",
                                          json={"refresh_token": first["refresh_token"]})
        auth.remember(response)

        assert response.status_code == 200
        second = response.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert auth.decode(second["access_token"])[1]["jti"] != \
            auth.decode(first["access_token"])[1]["jti"]
        assert await auth.protected(second["access_token"]) == 200
        spent = await auth.client.post("/auth/refresh",
                                       json={"refresh_token": first["refresh_token"]})
        assert spent.status_code == 401

    async def test_new_access_token_carries_the_current_roles(self, auth):
        alice = auth.users.add("alice", roles=("operator",))
        first = await auth.tokens("alice")
        alice.roles = ["viewer"]

        response = await auth.client.post("/auth/refresh",
                                          json={"refresh_token": first["refresh_token"]})

        claims = auth.decode(response.json()["access_token"])[1]
        assert claims["roles"] == ["viewer"]
        assert "targets:write" not in claims["perms"]
        assert "targets:read" in claims["perms"]

    @pytest.mark.parametrize("change", ["disabled", "deleted"])
    async def test_inactive_or_missing_user_ends_the_session(self, auth, change):
        alice = auth.users.add("alice")
        first = await auth.tokens("alice")
        if change == "disabled":
            alice.active = False
        else:
            del auth.users.by_id[alice.id]

        response = await auth.client.post("/auth/refresh",
                                          json={"refresh_token": first["refresh_token"]})
        assert response.status_code == 401

        # Coming back does not revive the session: the family was revoked.
        alice.active = True
        auth.users.by_id[alice.id] = alice
        again = await auth.client.post("/auth/refresh",
                                       json={"refresh_token": first["refresh_token"]})
        assert again.status_code == 401
        topics = [e["type"] for e in await auth.drained()]
        assert "auth.session_revoked" in topics

    async def test_expired_refresh_token_is_refused(self, auth):
        auth.users.add("alice")
        first = await auth.tokens("alice")
        await auth.execute(update(RefreshToken).values(expires_at=_past()))

        response = await auth.client.post("/auth/refresh",
                                          json={"refresh_token": first["refresh_token"]})
        assert response.status_code == 401

    async def test_unknown_refresh_token_is_refused(self, auth):
        response = await auth.client.post("/auth/refresh", json={"refresh_token": "nope"})
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM


class TestLogout:
    async def test_ends_the_session_and_the_access_token(self, auth):
        auth.users.add("alice")
        tokens = await auth.tokens("alice")
        jti = auth.decode(tokens["access_token"])[1]["jti"]

        response = await auth.client.post("/auth/logout",
                                          json={"refresh_token": tokens["refresh_token"]},
                                          headers=auth.bearer(tokens["access_token"]))

        assert response.status_code == 204
        assert await auth.protected(tokens["access_token"]) == 401
        refresh = await auth.client.post("/auth/refresh",
                                         json={"refresh_token": tokens["refresh_token"]})
        assert refresh.status_code == 401
        denied = await auth.runtime.get_state(STATE_STORE, REVOKED_JTI_PREFIX + jti)
        assert denied is not None
        entry = auth.runtime._state[(STATE_STORE, REVOKED_JTI_PREFIX + jti)]
        assert entry[2] is not None and entry[2] <= time.time() + 901  # expires with the token
        events = await auth.drained()
        revoked = [e for e in events if e["type"] == "auth.session_revoked"]
        assert revoked and revoked[0]["data"]["reason"] == "logout"

    async def test_needs_the_access_token(self, auth):
        auth.users.add("alice")
        tokens = await auth.tokens("alice")
        response = await auth.client.post("/auth/logout",
                                          json={"refresh_token": tokens["refresh_token"]})
        assert response.status_code == 401
        refresh = await auth.client.post("/auth/refresh",
                                         json={"refresh_token": tokens["refresh_token"]})
        assert refresh.status_code == 200

    async def test_someone_elses_refresh_token_is_left_alone(self, auth):
        auth.users.add("alice")
        auth.users.add("bob")
        alice = await auth.tokens("alice")
        bob = await auth.tokens("bob")

        response = await auth.client.post("/auth/logout",
                                          json={"refresh_token": bob["refresh_token"]},
                                          headers=auth.bearer(alice["access_token"]))

        assert response.status_code == 204
        assert await auth.protected(alice["access_token"]) == 401
        assert await auth.protected(bob["access_token"]) == 200
        refresh = await auth.client.post("/auth/refresh",
                                         json={"refresh_token": bob["refresh_token"]})
        assert refresh.status_code == 200


class TestJwks:
    async def test_lists_public_keys_only(self, auth):
        response = await auth.client.get("/auth/jwks")

        assert response.status_code == 200
        keys = response.json()["keys"]
        assert [k["kid"] for k in keys] == [key_id(auth.private_pem())]
        assert set(keys[0]) == {"kty", "n", "e", "kid", "alg", "use"}
        assert keys[0]["alg"] == "RS256" and keys[0]["kty"] == "RSA"

    async def test_other_services_verify_with_it(self, auth):
        """The JWKS route is what every other service's verifier fetches."""
        from opsconductor_core.tokens import TokenVerifier

        auth.users.add("alice")
        tokens = await auth.tokens("alice")
        verifier = TokenVerifier(issuer="opsconductor", audience="opsconductor-api",
                                 fetch_jwks=lambda: _json(auth.client.get("/auth/jwks")))
        claims = await verifier.verify(tokens["access_token"])
        assert claims["name"] == "alice"


async def _json(awaitable: Any) -> Any:
    return (await awaitable).json()


class TestApiTokens:
    async def _create(self, auth, access: str, **body: Any) -> Any:
        body.setdefault("name", "nightly backup")
        body.setdefault("expires_in_days", 30)
        response = await auth.client.post("/auth/api-tokens", json=body,
                                          headers=auth.bearer(access))
        auth.remember(response)
        return response

    async def test_create_shows_the_token_once(self, auth, no_secret_in):
        auth.users.add("alice")
        access = (await auth.tokens("alice"))["access_token"]

        response = await self._create(auth, access)

        assert response.status_code == 201
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) >= {"id", "name", "token", "permissions", "expires_at", "created_at"}
        assert body["token"].startswith("opsc_") and len(body["token"]) > 40
        assert body["permissions"] is None
        assert body["expires_at"].endswith("Z")
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)

        listed = await auth.client.get("/auth/api-tokens", headers=auth.bearer(access))
        assert listed.status_code == 200
        assert [t["id"] for t in listed.json()["items"]] == [body["id"]]
        assert "token" not in listed.json()["items"][0]
        no_secret_in(auth, listed.json())

        events = await auth.drained()
        created = [e for e in events if e["type"] == "auth.api_token_created"]
        assert created[0]["data"]["token_id"] == body["id"]
        no_secret_in(auth, events)

    async def test_api_token_authenticates_with_the_owners_rights(self, auth):
        alice = auth.users.add("alice", roles=("operator",))
        access = (await auth.tokens("alice"))["access_token"]
        token = (await self._create(auth, access, permissions=["targets:read"])).json()["token"]

        result = await auth.client.post("/internal/api-tokens/introspect", json={"token": token})

        assert result.status_code == 200
        body = result.json()
        assert body["active"] is True
        assert body["user_id"] == alice.id
        assert body["username"] == "alice"
        assert body["roles"] == ["operator"]
        assert body["permissions"] == ["targets:read"]
        assert isinstance(body["expires_at"], int)
        assert await auth.protected(token) == 200

    async def test_permissions_follow_the_owner(self, auth):
        alice = auth.users.add("alice", roles=("operator",))
        access = (await auth.tokens("alice"))["access_token"]
        scoped = (await self._create(auth, access,
                                     permissions=["targets:read", "targets:write"])).json()
        unscoped = (await self._create(auth, access, name="all")).json()

        alice.roles = ["viewer"]  # loses targets:write
        introspect = auth.client.post
        scoped_now = (await introspect("/internal/api-tokens/introspect",
                                       json={"token": scoped["token"]})).json()
        unscoped_now = (await introspect("/internal/api-tokens/introspect",
                                         json={"token": unscoped["token"]})).json()
        assert scoped_now["permissions"] == ["targets:read"]
        assert unscoped_now["permissions"] == alice.permissions

        alice.active = False
        disabled = await introspect("/internal/api-tokens/introspect",
                                    json={"token": scoped["token"]})
        assert disabled.json() == {"active": False}
        assert await auth.protected(scoped["token"]) == 401

    async def test_contract_client_reads_the_introspection(self, auth):
        alice = auth.users.add("alice", roles=("viewer",))
        access = (await auth.tokens("alice"))["access_token"]
        token = (await self._create(auth, access)).json()["token"]
        auth.runtime.mount("auth", auth.app)

        principal = await AuthClient(auth.runtime).introspect_api_token(token)
        missing = await AuthClient(auth.runtime).introspect_api_token("opsc_unknown")

        assert principal is not None and principal.kind == "api_token"
        assert principal.subject == alice.id
        assert principal.permissions == frozenset(alice.permissions)
        assert missing is None

    async def test_auth_failing_is_503_not_an_invalid_token(self):
        failing = FastAPI()

        @failing.post("/internal/api-tokens/introspect")
        async def broken() -> JSONResponse:
            return JSONResponse({"detail": "database down"}, status_code=500)

        runtime = RecordingRuntime(app_id="gateway")
        runtime.mount("auth", failing)
        with pytest.raises(ServiceUnavailable):
            await AuthClient(runtime).introspect_api_token("opsc_some_token")

    async def test_unknown_and_expired_tokens_are_inactive(self, auth):
        auth.users.add("alice")
        access = (await auth.tokens("alice"))["access_token"]
        token = (await self._create(auth, access)).json()["token"]
        await auth.execute(update(ApiToken).values(expires_at=_past()))

        for candidate in (token, "opsc_" + "x" * 43, "not-even-prefixed"):
            result = await auth.client.post("/internal/api-tokens/introspect",
                                            json={"token": candidate})
            assert result.json() == {"active": False}
        assert await auth.protected(token) == 401

    async def test_api_tokens_cannot_mint_api_tokens(self, auth):
        auth.users.add("alice", roles=("admin",))
        access = (await auth.tokens("alice"))["access_token"]
        token = (await self._create(auth, access)).json()["token"]

        response = await self._create(auth, token, name="second")

        assert response.status_code == 403
        listed = await auth.client.get("/auth/api-tokens", headers=auth.bearer(access))
        assert len(listed.json()["items"]) == 1

    async def test_cannot_grant_what_the_caller_lacks(self, auth):
        auth.users.add("victor", roles=("viewer",))
        access = (await auth.tokens("victor"))["access_token"]

        response = await self._create(auth, access, permissions=["targets:read", "users:write"])

        assert response.status_code == 403
        assert "users:write" in response.json()["detail"]
        listed = await auth.client.get("/auth/api-tokens", headers=auth.bearer(access))
        assert listed.json()["items"] == []

    async def test_needs_a_token(self, auth):
        assert (await auth.client.get("/auth/api-tokens")).status_code == 401
        response = await auth.client.post("/auth/api-tokens",
                                          json={"name": "x", "expires_in_days": 1})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_list_shows_only_mine_page_by_page(self, auth):
        auth.users.add("alice")
        auth.users.add("bob")
        alice = (await auth.tokens("alice"))["access_token"]
        bob = (await auth.tokens("bob"))["access_token"]
        for n in range(3):
            await self._create(auth, alice, name=f"alice-{n}")
        await self._create(auth, bob, name="bob-0")

        names: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = (await auth.client.get("/auth/api-tokens", params=params,
                                          headers=auth.bearer(alice))).json()
            names += [t["name"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(names) == ["alice-0", "alice-1", "alice-2"]

        bad = await auth.client.get("/auth/api-tokens", params={"limit": "501"},
                                    headers=auth.bearer(alice))
        assert bad.status_code == 422

    async def test_delete_revokes_and_other_users_get_404(self, auth):
        auth.users.add("alice")
        auth.users.add("bob")
        alice = (await auth.tokens("alice"))["access_token"]
        bob = (await auth.tokens("bob"))["access_token"]
        mine = (await self._create(auth, alice)).json()

        theirs = await auth.client.delete(f"/auth/api-tokens/{mine['id']}",
                                          headers=auth.bearer(bob))
        assert theirs.status_code == 404
        assert await auth.protected(mine["token"]) == 200

        gone = await auth.client.delete(f"/auth/api-tokens/{mine['id']}",
                                        headers=auth.bearer(alice))
        assert gone.status_code == 204
        assert await auth.protected(mine["token"]) == 401
        again = await auth.client.delete(f"/auth/api-tokens/{mine['id']}",
                                         headers=auth.bearer(alice))
        assert again.status_code == 404
        bad = await auth.client.delete("/auth/api-tokens/not-a-uuid", headers=auth.bearer(alice))
        assert bad.status_code == 422
        topics = [e["type"] for e in await auth.drained()]
        assert topics.count("auth.api_token_revoked") == 1


class TestValidation:
    @pytest.mark.parametrize("body", [
        {"username": "alice", "password": "pw", "remember_me": True},
        {"username": 42, "password": "pw"},
        {"username": "alice", "password": ["pw"]},
        {"username": "alice"},
        {"username": "", "password": "pw"},
        {"username": "a" * 151, "password": "pw"},
    ])
    async def test_login_rejects_malformed_bodies(self, auth, body):
        auth.users.add("alice")
        response = await auth.client.post("/auth/login", json=body)

        assert response.status_code == 422
        assert response.headers["content-type"] == PROBLEM
        assert "errors" in response.json()
        assert "pw" not in str(response.json()["errors"].values())
        assert await auth.drained() == []
        assert not [k for k in auth.runtime._state if k[1].startswith(RATE_LIMIT_PREFIX)]

    @pytest.mark.parametrize("body", [
        {"name": "x", "expires_in_days": "30"},
        {"name": "x", "expires_in_days": 0},
        {"name": "x", "expires_in_days": 366},
        {"name": "x", "expires_in_days": 30.5},
        {"name": "x", "expires_in_days": 30, "scope": "all"},
        {"name": "", "expires_in_days": 30},
        {"name": "   ", "expires_in_days": 30},
        {"name": "n" * 101, "expires_in_days": 30},
        {"name": "x", "expires_in_days": 30, "permissions": "targets:read"},
        {"name": "x", "expires_in_days": 30, "permissions": ["targets:fly"]},
        {"expires_in_days": 30},
    ])
    async def test_api_token_create_rejects_malformed_bodies(self, auth, body):
        auth.users.add("alice", roles=("admin",))
        access = (await auth.tokens("alice"))["access_token"]
        await auth.drained()
        published = len(auth.runtime.published)

        response = await auth.client.post("/auth/api-tokens", json=body,
                                          headers=auth.bearer(access))

        assert response.status_code == 422
        listed = await auth.client.get("/auth/api-tokens", headers=auth.bearer(access))
        assert listed.json()["items"] == []
        assert len(await auth.drained()) == published

    @pytest.mark.parametrize("path", ["/auth/refresh", "/auth/logout"])
    async def test_refresh_and_logout_reject_unknown_fields(self, auth, path):
        auth.users.add("alice")
        tokens = await auth.tokens("alice")
        response = await auth.client.post(
            path, json={"refresh_token": tokens["refresh_token"], "extra": 1},
            headers=auth.bearer(tokens["access_token"]))
        assert response.status_code == 422
        assert await auth.protected(tokens["access_token"]) == 200
        refresh = await auth.client.post("/auth/refresh",
                                         json={"refresh_token": tokens["refresh_token"]})
        assert refresh.status_code == 200


class TestRateLimit:
    async def test_eleventh_failure_for_a_username_is_429(self, auth):
        auth.users.add("alice")
        auth.users.add("bob")
        for attempt in range(10):
            # Case does not help an attacker: "ALICE" counts for "alice".
            name = "ALICE" if attempt % 2 else "alice"
            assert (await auth.login(name, f"guess-{attempt}")).status_code == 401

        blocked = await auth.login("alice")  # even the right password

        assert blocked.status_code == 429
        assert blocked.headers["content-type"] == PROBLEM
        assert 0 < int(blocked.headers["retry-after"]) <= 300
        assert (await auth.login("bob")).status_code == 200
        events = await auth.drained()
        assert [e["data"]["reason"] for e in events if e["type"] == "auth.login_failed"][-1] \
            == "rate_limited"

    async def test_success_clears_the_failure_count(self, auth):
        auth.users.add("alice")
        for _ in range(9):
            await auth.login("alice", "wrong")
        assert (await auth.login("alice")).status_code == 200
        for _ in range(10):
            assert (await auth.login("alice", "wrong")).status_code == 401
        assert (await auth.login("alice", "wrong")).status_code == 429

    async def test_window_ends(self, make_auth):
        harness = await make_auth(rate_limit_window_s=1, login_failures_per_user=2)
        harness.users.add("alice")
        for _ in range(2):
            await harness.login("alice", "wrong")
        assert (await harness.login("alice")).status_code == 429
        await asyncio.sleep(1.1)
        assert (await harness.login("alice")).status_code == 200

    async def test_per_address_limit_counts_every_attempt(self, make_auth):
        harness = await make_auth(login_attempts_per_address=3)
        for name in ("alice", "bob", "carol", "dave"):
            harness.users.add(name)
        spray = {"X-Forwarded-For": "203.0.113.7"}

        statuses = [(await harness.login(n, "wrong", **spray)).status_code
                    for n in ("alice", "bob", "carol")]
        blocked = await harness.login("dave", **spray)

        assert statuses == [401, 401, 401]
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        other = await harness.login("dave", **{"X-Forwarded-For": "198.51.100.1"})
        assert other.status_code == 200

    async def test_socket_peer_is_used_without_forwarded_for(self, make_auth):
        harness = await make_auth(login_attempts_per_address=2)
        harness.users.add("alice")
        assert (await harness.login("alice")).status_code == 200
        assert (await harness.login("alice")).status_code == 200
        assert (await harness.login("alice")).status_code == 429


class TestNoSecretsLeak:
    async def test_nothing_secret_in_responses_events_or_logs(self, auth, caplog, no_secret_in):
        from opsconductor_core.logging import JsonFormatter

        # Our own loggers at every level; libraries at INFO, the level services run at (the
        # SQLite driver logs bound parameters at DEBUG, which no deployment enables).
        caplog.set_level("INFO")
        caplog.set_level("DEBUG", logger="opsconductor")
        auth.users.add("alice", roles=("admin",))
        responses = [await auth.login("alice", "a wrong password"),
                     await auth.client.post("/auth/login",
                                            json={"username": "alice", "password": 7})]
        tokens = await auth.tokens("alice")
        refreshed = await auth.client.post("/auth/refresh",
                                           json={"refresh_token": tokens["refresh_token"]})
        auth.remember(refreshed)
        new = refreshed.json()
        created = await auth.client.post("/auth/api-tokens",
                                         json={"name": "ci", "expires_in_days": 7},
                                         headers=auth.bearer(new["access_token"]))
        auth.remember(created)
        token = created.json()["token"]
        responses += [
            await auth.client.post("/internal/api-tokens/introspect", json={"token": token}),
            await auth.client.get("/auth/api-tokens", headers=auth.bearer(token)),
            await auth.client.post("/auth/refresh",
                                   json={"refresh_token": tokens["refresh_token"]}),
            await auth.client.post("/auth/logout", json={"refresh_token": new["refresh_token"]},
                                   headers=auth.bearer(new["access_token"])),
            await auth.client.get("/auth/api-tokens", headers=auth.bearer(new["access_token"])),
            await auth.client.get("/auth/jwks"),
            await auth.client.post("/housekeeping", json={}),
        ]
        events = await auth.drained()

        for response in responses:
            no_secret_in(auth, response.text)
        for issued in (refreshed, created):
            # A token-issuing answer holds its own new tokens and nothing else secret.
            own = {v for k, v in issued.json().items() if k in ("access_token", "refresh_token",
                                                                 "token")}
            assert own
            for secret in auth.seen_secrets - own:
                assert secret not in issued.text
            for secret in auth.seen_secrets:
                assert hashlib.sha256(secret.encode()).hexdigest() not in issued.text
            assert auth.password not in issued.text
        no_secret_in(auth, events)
        formatter = JsonFormatter()
        logs = "\n".join(formatter.format(record) for record in caplog.records)
        assert "login failed" in logs  # the check below looks at real log lines
        no_secret_in(auth, logs)
