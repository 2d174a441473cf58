"""The one module that touches the JWT library (python-jose), so it can be swapped.

One pinned asymmetric algorithm; exact issuer and audience; exp, iat, sub and jti required.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from jose.exceptions import JOSEError

ALGORITHM = "RS256"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "iss", "aud")


class InvalidToken(Exception):
    """The token must not be trusted; the reason is for logs, never for the caller."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: str

    @cached_property
    def public_jwk(self) -> dict[str, Any]:
        # Derived from the private PEM, which costs tens of milliseconds to parse.
        return public_jwk_from_private(self.private_pem, self.kid)

    @cached_property
    def _loaded(self) -> Any:
        # Parsing and validating an RSA PEM costs tens of milliseconds: do it once per key.
        return jwk.construct(self.private_pem, ALGORITHM)


def generate_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _public_pem(private_pem: str) -> bytes:
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(private_pem: str) -> str:
    """A stable id derived from the public key, so every replica names a key the same way."""
    return base64.urlsafe_b64encode(hashlib.sha256(_public_pem(private_pem)).digest()[:12]).decode()


def signing_key(private_pem: str) -> SigningKey:
    return SigningKey(kid=key_id(private_pem), private_pem=private_pem)


def public_jwk_from_private(private_pem: str, kid: str) -> dict[str, Any]:
    public = jwk.construct(_public_pem(private_pem).decode(), ALGORITHM).to_dict()
    return {"kty": "RSA", "n": public["n"], "e": public["e"], "kid": kid, "alg": ALGORITHM, "use": "sig"}


def sign(key: SigningKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key._loaded, algorithm=ALGORITHM, headers={"kid": key.kid})


def new_access_claims(
    *, subject: str, issuer: str, audience: str, ttl_s: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "aud": audience, "sub": subject, "iat": now, "nbf": now,
        "exp": now + ttl_s, "jti": str(uuid.uuid4()),
    }
    claims.update(extra or {})
    return claims


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]


class TokenVerifier:
    """Verifies access tokens against a JWKS fetched through `fetch_jwks`, cached by kid.

    An unknown kid triggers one refresh (at most every `refresh_floor_s`), so rotated keys are
    picked up without letting garbage kids hammer the issuer.
    """

    def __init__(self, *, issuer: str, audience: str, fetch_jwks: JwksFetcher,
                 refresh_floor_s: float = 5.0, leeway_s: int = 0) -> None:
        self._issuer = issuer
        self._audience = audience
        self._fetch = fetch_jwks
        # kid -> constructed public key (constructing one per request costs ~0.5 ms).
        self._keys: dict[str, Any] = {}
        self._last_refresh = -refresh_floor_s
        self._refresh_lock = asyncio.Lock()
        self._refresh_floor = refresh_floor_s
        self._leeway = leeway_s

    async def _key_for(self, kid: str) -> Any:
        if kid not in self._keys:
            # Concurrent requests with a new kid wait for one shared refresh, not fail.
            async with self._refresh_lock:
                if kid not in self._keys and time.monotonic() - self._last_refresh >= self._refresh_floor:
                    self._last_refresh = time.monotonic()
                    try:
                        jwks = await self._fetch()
                    except Exception as exc:
                        raise InvalidToken(f"jwks unavailable: {type(exc).__name__}") from exc
                    self._keys = {k["kid"]: jwk.construct(k, ALGORITHM) for k in jwks.get("keys", [])
                                  if k.get("kid") and k.get("kty") == "RSA"}
        try:
            return self._keys[kid]
        except KeyError:
            raise InvalidToken("unknown kid") from None

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as exc:
            raise InvalidToken("malformed header") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("missing kid")
        key = await self._key_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=self._audience, issuer=self._issuer,
                options={f"require_{c}": True for c in REQUIRED_CLAIMS} | {"leeway": self._leeway},
            )
        except JOSEError as exc:
            raise InvalidToken(type(exc).__name__) from exc
        return claims
