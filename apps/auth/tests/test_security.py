"""Attacks on the access token, refresh-token reuse, and signing-key rotation.

Forged tokens are built by hand (base64 + hmac / the real RSA key) so no library check can
quietly refuse to produce them; every one must be refused on a protected route of auth.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from opsconductor_contracts.components import JWT_SIGNING_KEY_SECRET
from opsconductor_core.tokens import generate_private_pem, key_id, sign, signing_key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def public_pem(private_pem: str) -> bytes:
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


async def valid_claims(auth) -> dict[str, Any]:
    """Claims exactly like the ones auth issues to alice (admin), taken from a real login."""
    auth.users.add("alice", roles=("viewer",))
    tokens = await auth.tokens("alice")
    return auth.decode(tokens["access_token"])[1]


class TestForgedAccessTokens:
    async def test_control_a_correctly_signed_hand_made_token_is_accepted(self, auth):
        """Shows the forging below is sound: only the attack itself makes a token fail."""
        claims = await valid_claims(auth)
        claims["jti"] = "hand-made"
        token = sign(signing_key(auth.private_pem()), claims)
        assert await auth.protected(token) == 200

    async def test_alg_none(self, auth):
        claims = await valid_claims(auth)
        kid = key_id(auth.private_pem())
        for alg in ("none", "None", "NONE"):
            token = f"{segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{segment(claims)}."
            assert await auth.protected(token) == 401

    async def test_hs256_signed_with_the_public_key_pem(self, auth):
        claims = await valid_claims(auth)
        kid = key_id(auth.private_pem())
        pem = public_pem(auth.private_pem())
        for secret in (pem, pem.strip()):
            token = hs256({"alg": "HS256", "typ": "JWT", "kid": kid}, claims, secret)
            assert await auth.protected(token) == 401

    async def test_hs256_signed_with_the_public_key_jwk(self, auth):
        claims = await valid_claims(auth)
        jwk = (await auth.client.get("/auth/jwks")).json()["keys"][0]
        for secret in (json.dumps(jwk).encode(), json.dumps(jwk, separators=(",", ":")).encode(),
                       jwk["n"].encode()):
            token = hs256({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}, claims, secret)
            assert await auth.protected(token) == 401

    @pytest.mark.parametrize("attack", [
        "expired", "nbf in the future", "wrong iss", "wrong aud", "missing exp", "missing jti",
        "missing sub", "missing iat",
    ])
    async def test_properly_signed_but_invalid_claims(self, auth, attack):
        claims = await valid_claims(auth)
        now = int(time.time())
        if attack == "expired":
            claims.update(iat=now - 1000, nbf=now - 1000, exp=now - 10)
        elif attack == "nbf in the future":
            claims.update(nbf=now + 600)
        elif attack == "wrong iss":
            claims.update(iss="https://evil.example")
        elif attack == "wrong aud":
            claims.update(aud="some-other-api")
        else:
            del claims[attack.removeprefix("missing ")]
        token = sign(signing_key(auth.private_pem()), claims)
        assert await auth.protected(token) == 401

    async def test_tampered_payload_with_a_valid_signature_of_another(self, auth):
        claims = await valid_claims(auth)
        genuine = sign(signing_key(auth.private_pem()), claims)
        header, _, signature = genuine.split(".")
        claims["perms"] = ["users:write", "roles:write"]
        claims["roles"] = ["admin"]
        tampered = f"{header}.{segment(claims)}.{signature}"

        assert await auth.protected(genuine) == 200
        assert await auth.protected(tampered) == 401

    async def test_signed_by_another_rsa_key_claiming_our_kid(self, auth):
        claims = await valid_claims(auth)
        impostor = signing_key(generate_private_pem())
        token = sign(type(impostor)(kid=key_id(auth.private_pem()),
                                    private_pem=impostor.private_pem), claims)
        assert await auth.protected(token) == 401

    async def test_unknown_kid_and_garbage(self, auth):
        claims = await valid_claims(auth)
        stranger = signing_key(generate_private_pem())
        assert await auth.protected(sign(stranger, claims)) == 401
        for garbage in ("a.b.c", "....", "not-a-token", ""):
            response = await auth.client.get("/auth/api-tokens",
                                             headers={"Authorization": f"Bearer {garbage}"})
            assert response.status_code == 401

    async def test_revoked_jti_after_logout(self, auth):
        auth.users.add("alice")
        tokens = await auth.tokens("alice")
        assert await auth.protected(tokens["access_token"]) == 200

        await auth.client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]},
                               headers=auth.bearer(tokens["access_token"]))

        assert await auth.protected(tokens["access_token"]) == 401


class TestRefreshReuse:
    async def test_replayed_refresh_token_kills_the_whole_family(self, auth):
        auth.users.add("alice")
        first = await auth.tokens("alice")
        rotated = await auth.client.post("/auth/refresh",
                                         json={"refresh_token": first["refresh_token"]})
        successor = rotated.json()
        assert await auth.protected(successor["access_token"]) == 200

        replay = await auth.client.post("/auth/refresh",
                                        json={"refresh_token": first["refresh_token"]})
        assert replay.status_code == 401

        after = await auth.client.post("/auth/refresh",
                                       json={"refresh_token": successor["refresh_token"]})
        assert after.status_code == 401
        # The access tokens issued in the family stop working at once, too.
        assert await auth.protected(successor["access_token"]) == 401
        assert await auth.protected(first["access_token"]) == 401
        events = await auth.drained()
        revoked = [e for e in events if e["type"] == "auth.session_revoked"]
        assert [e["data"]["reason"] for e in revoked] == ["refresh_token_reuse"]

    async def test_other_sessions_of_the_user_survive(self, auth):
        auth.users.add("alice")
        laptop = await auth.tokens("alice")
        phone = await auth.tokens("alice")
        await auth.client.post("/auth/refresh", json={"refresh_token": laptop["refresh_token"]})
        await auth.client.post("/auth/refresh", json={"refresh_token": laptop["refresh_token"]})

        response = await auth.client.post("/auth/refresh",
                                          json={"refresh_token": phone["refresh_token"]})
        assert response.status_code == 200

    async def test_concurrent_exchanges_issue_at_most_one_successor(self, auth):
        auth.users.add("alice")
        first = await auth.tokens("alice")

        results = await asyncio.gather(*[
            auth.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
            for _ in range(5)])

        winners = [r for r in results if r.status_code == 200]
        assert len(winners) <= 1
        assert all(r.status_code in (200, 401) for r in results)


class TestKeyRotation:
    async def test_rotation_keeps_old_tokens_valid_until_the_old_key_ages_out(self, make_auth):
        auth = await make_auth(access_ttl_s=2, key_reload_s=0.5, key_retention_leeway_s=0)
        auth.users.add("alice")
        old_kid = key_id(auth.private_pem())
        before = await auth.tokens("alice")

        new_pem = generate_private_pem()
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = new_pem
        tick = await auth.client.post("/housekeeping", json={})
        rotated_at = time.monotonic()
        assert tick.status_code == 200

        after = await auth.tokens("alice")
        assert auth.decode(after["access_token"])[0]["kid"] == key_id(new_pem) != old_kid
        assert await auth.protected(before["access_token"]) == 200
        assert await auth.protected(after["access_token"]) == 200
        kids = [k["kid"] for k in (await auth.client.get("/auth/jwks")).json()["keys"]]
        assert sorted(kids) == sorted([old_kid, key_id(new_pem)])

        # Retention = access TTL (2 s) + reload interval (0.5 s) + leeway (0).
        await asyncio.sleep(max(0.0, 2.6 - (time.monotonic() - rotated_at)))
        kids = [k["kid"] for k in (await auth.client.get("/auth/jwks")).json()["keys"]]
        assert kids == [key_id(new_pem)]
        # Expired by now anyway once `exp` (whole seconds, compared as whole seconds) has passed.
        expires = auth.decode(before["access_token"])[1]["exp"]
        await asyncio.sleep(max(0.0, expires + 1 - time.time()))
        assert await auth.protected(before["access_token"]) == 401

    async def test_a_changed_secret_is_picked_up_without_a_tick(self, make_auth):
        auth = await make_auth(key_reload_s=0.2)
        auth.users.add("alice")
        new_pem = generate_private_pem()
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = new_pem

        await asyncio.sleep(0.25)
        tokens = await auth.tokens("alice")

        assert auth.decode(tokens["access_token"])[0]["kid"] == key_id(new_pem)

    async def test_within_the_reload_interval_the_key_in_memory_signs(self, make_auth):
        auth = await make_auth(key_reload_s=600)
        auth.users.add("alice")
        old_kid = key_id(auth.private_pem())
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = generate_private_pem()

        tokens = await auth.tokens("alice")

        assert auth.decode(tokens["access_token"])[0]["kid"] == old_kid

    async def test_replicas_and_restarts_share_the_key_history(self, make_auth):
        first = await make_auth()
        second = await make_auth(runtime=first.runtime, users=first.users)
        first.users.add("alice")
        old_kid = key_id(first.private_pem())
        new_pem = generate_private_pem()
        first.runtime.secrets[JWT_SIGNING_KEY_SECRET] = new_pem

        await first.client.post("/housekeeping", json={})
        minted = await first.tokens("alice")

        # The second replica has not re-read the secret, yet verifies the new key's tokens and
        # publishes both keys, because the key table is shared.
        assert await second.protected(minted["access_token"]) == 200
        kids = {k["kid"] for k in (await second.client.get("/auth/jwks")).json()["keys"]}
        assert kids == {old_kid, key_id(new_pem)}

        restarted = await make_auth(runtime=first.runtime, users=first.users)
        kids = {k["kid"] for k in (await restarted.client.get("/auth/jwks")).json()["keys"]}
        assert kids == {old_kid, key_id(new_pem)}

    async def test_going_back_to_an_earlier_key(self, make_auth):
        auth = await make_auth(access_ttl_s=1, key_reload_s=0, key_retention_leeway_s=0)
        auth.users.add("alice")
        original = auth.private_pem()
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = generate_private_pem()
        await auth.client.post("/housekeeping", json={})
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = original
        await auth.client.post("/housekeeping", json={})
        await asyncio.sleep(1.2)

        kids = [k["kid"] for k in (await auth.client.get("/auth/jwks")).json()["keys"]]
        tokens = await auth.tokens("alice")

        assert kids == [key_id(original)]
        assert await auth.protected(tokens["access_token"]) == 200

    async def test_an_unreadable_secret_keeps_the_current_key(self, make_auth, caplog):
        auth = await make_auth(key_reload_s=0)
        auth.users.add("alice")
        kid = key_id(auth.private_pem())
        garbage = "-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----"
        auth.runtime.secrets[JWT_SIGNING_KEY_SECRET] = garbage

        tokens = await auth.tokens("alice")

        assert auth.decode(tokens["access_token"])[0]["kid"] == kid
        assert "not really a key" not in caplog.text
        assert any("signing key could not be read" in r.getMessage() for r in caplog.records)
