"""TokenVerifier: RS256 only, exact iss/aud, every required claim, JWKS refreshed sparingly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from jose import jwt as jose_jwt

from opsconductor_core import tokens
from opsconductor_core.tokens import (
    InvalidToken,
    SigningKey,
    TokenVerifier,
    generate_private_pem,
    new_access_claims,
    sign,
    signing_key,
)

ISSUER = "opsconductor"
AUDIENCE = "opsconductor-api"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return signing_key(generate_private_pem())


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    return signing_key(generate_private_pem())


class Jwks:
    """The issuer's JWKS endpoint, counting how often it is asked."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.fail:
            raise ConnectionError("auth is down")
        return {"keys": [k.public_jwk for k in self.keys]}


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = new_access_claims(subject="user-1", issuer=ISSUER, audience=AUDIENCE, ttl_s=300,
                               extra={"perms": ["jobs:read"]})
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _verifier(jwks: Jwks, floor: float = 60.0) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, fetch_jwks=jwks, refresh_floor_s=floor)


class TestAccepts:
    async def test_a_token_signed_by_a_published_key(self, key: SigningKey) -> None:
        claims = await _verifier(Jwks(key)).verify(sign(key, _claims()))

        assert claims["sub"] == "user-1"
        assert claims["perms"] == ["jobs:read"]

    def test_key_ids_are_stable_and_distinct(self, key: SigningKey, other_key: SigningKey) -> None:
        assert signing_key(key.private_pem).kid == key.kid
        assert key.kid != other_key.kid
        assert key.public_jwk["kid"] == key.kid
        assert key.public_jwk["alg"] == "RS256"
        assert "d" not in key.public_jwk  # the private exponent never leaves the issuer


class TestJwksRefresh:
    async def test_keys_are_fetched_once_then_cached(self, key: SigningKey) -> None:
        jwks = Jwks(key)
        verifier = _verifier(jwks)

        for _ in range(5):
            await verifier.verify(sign(key, _claims()))

        assert jwks.fetches == 1

    async def test_unknown_kid_triggers_exactly_one_refresh(
        self, key: SigningKey, other_key: SigningKey
    ) -> None:
        jwks = Jwks(key)
        verifier = _verifier(jwks, floor=0)
        await verifier.verify(sign(key, _claims()))
        jwks.keys.append(other_key)  # the issuer rotates in a new key

        claims = await verifier.verify(sign(other_key, _claims()))
        await verifier.verify(sign(other_key, _claims()))

        assert claims["sub"] == "user-1"
        assert jwks.fetches == 2

    async def test_garbage_kids_cannot_hammer_the_issuer(self, key: SigningKey) -> None:
        jwks = Jwks(key)
        verifier = _verifier(jwks, floor=60)
        await verifier.verify(sign(key, _claims()))
        forged = SigningKey(kid="made-up", private_pem=key.private_pem)

        for _ in range(10):
            with pytest.raises(InvalidToken, match="unknown kid"):
                await verifier.verify(sign(forged, _claims()))

        assert jwks.fetches == 1

    async def test_issuer_down_means_invalid_not_a_crash(self, key: SigningKey) -> None:
        jwks = Jwks(key)
        jwks.fail = True

        with pytest.raises(InvalidToken, match="jwks unavailable"):
            await _verifier(jwks).verify(sign(key, _claims()))


class TestRejects:
    async def test_alg_none(self, key: SigningKey) -> None:
        token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{_b64(_claims())}."

        with pytest.raises(InvalidToken, match="algorithm"):
            await _verifier(Jwks(key)).verify(token)

    async def test_hs256_signed_with_the_public_key(self, key: SigningKey) -> None:
        # The classic confusion attack: the public key used as an HMAC secret.
        public_pem = tokens._public_pem(key.private_pem)
        signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{_b64(_claims())}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

        with pytest.raises(InvalidToken, match="algorithm"):
            await _verifier(Jwks(key)).verify(token)

    async def test_rs256_header_over_an_hmac_signature(self, key: SigningKey) -> None:
        header = _b64({"alg": "RS256", "typ": "JWT", "kid": key.kid})
        forged = f"{header}.{_b64(_claims())}.{_b64({'sig': 'nope'})}"

        with pytest.raises(InvalidToken):
            await _verifier(Jwks(key)).verify(forged)

    @pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "iss", "aud"])
    async def test_missing_required_claim(self, key: SigningKey, claim: str) -> None:
        token = sign(key, _claims(**{claim: None}))

        with pytest.raises(InvalidToken):
            await _verifier(Jwks(key)).verify(token)

    @pytest.mark.parametrize(("claim", "value"), [
        ("iss", "someone-else"),
        ("aud", "another-api"),
        ("exp", int(time.time()) - 10),
        ("nbf", int(time.time()) + 3600),
    ])
    async def test_wrong_issuer_audience_or_time(
        self, key: SigningKey, claim: str, value: Any
    ) -> None:
        with pytest.raises(InvalidToken):
            await _verifier(Jwks(key)).verify(sign(key, _claims(**{claim: value})))

    async def test_signed_by_another_key_under_a_known_kid(
        self, key: SigningKey, other_key: SigningKey
    ) -> None:
        impostor = SigningKey(kid=key.kid, private_pem=other_key.private_pem)

        with pytest.raises(InvalidToken):
            await _verifier(Jwks(key)).verify(sign(impostor, _claims()))

    async def test_tampered_payload(self, key: SigningKey) -> None:
        header, _, signature = sign(key, _claims()).split(".")
        tampered = f"{header}.{_b64(_claims(perms=['users:write']))}.{signature}"

        with pytest.raises(InvalidToken):
            await _verifier(Jwks(key)).verify(tampered)

    async def test_missing_kid(self, key: SigningKey) -> None:
        token = jose_jwt.encode(_claims(), key.private_pem, algorithm="RS256")

        with pytest.raises(InvalidToken, match="kid"):
            await _verifier(Jwks(key)).verify(token)

    @pytest.mark.parametrize("garbage", ["", "a.b.c", "not-a-token", "e30.e30.e30"])
    async def test_garbage(self, key: SigningKey, garbage: str) -> None:
        with pytest.raises(InvalidToken):
            await _verifier(Jwks(key)).verify(garbage)

    async def test_a_non_rsa_key_in_the_jwks_is_not_used(self, key: SigningKey) -> None:
        class OctJwks(Jwks):
            async def __call__(self) -> dict[str, Any]:
                self.fetches += 1
                return {"keys": [{"kty": "oct", "kid": key.kid, "k": _b64({"x": 1})}]}

        with pytest.raises(InvalidToken, match="unknown kid"):
            await _verifier(OctJwks()).verify(sign(key, _claims()))


class TestConcurrentFirstUse:
    async def test_many_requests_with_a_new_kid_share_one_refresh(self, key: SigningKey) -> None:
        """Under load the first burst of requests all carry a kid the cache has not seen yet."""
        fetches = 0

        async def slow_jwks() -> dict[str, Any]:
            nonlocal fetches
            fetches += 1
            await asyncio.sleep(0.05)
            return {"keys": [key.public_jwk]}

        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, fetch_jwks=slow_jwks)
        token = sign(key, _claims())
        results = await asyncio.gather(*(verifier.verify(token) for _ in range(50)))
        assert all(r["sub"] == results[0]["sub"] for r in results)
        assert fetches == 1
