"""Envelope encryption of credentials: AES-256-GCM under a per-record data key, the data key
wrapped (AES-256-GCM) under a master key from the keyring.

Both layers authenticate the target's id as associated data: a ciphertext or wrapped key copied
into another row fails to open. Each row stores the id of the master key that wraps its data
key, so a rotation re-wraps rows one batch at a time while old rows keep opening.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsconductor_targets.keyring import Keyring

NONCE_BYTES = 12
_SECRET_AAD = b"opsconductor/targets/credential/secret/v1/"
_KEY_AAD = b"opsconductor/targets/credential/data-key/v1/"


class CredentialUnavailable(Exception):
    """A sealed credential cannot be opened: wrong row, tampered, or its master key is gone."""


@dataclass(frozen=True, repr=False)
class CredentialSecret:
    """The plaintext of a credential; only ever in memory, never in a repr."""

    password: str | None = None
    private_key: str | None = None
    passphrase: str | None = None

    def to_bytes(self) -> bytes:
        data = {k: v for k, v in (("password", self.password), ("private_key", self.private_key),
                                  ("passphrase", self.passphrase)) if v is not None}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CredentialSecret:
        data = json.loads(raw)
        return cls(password=data.get("password"), private_key=data.get("private_key"),
                   passphrase=data.get("passphrase"))

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(v for v in (self.password, self.private_key, self.passphrase) if v)

    def __repr__(self) -> str:
        return "CredentialSecret([hidden])"


@dataclass(frozen=True, repr=False)
class SealedCredential:
    """What the database holds: nonce||ciphertext||tag for both the secret and the data key."""

    key_id: str
    wrapped_key: bytes
    ciphertext: bytes = field(default=b"")

    def __repr__(self) -> str:
        return f"SealedCredential(key_id={self.key_id!r})"


def _aad(prefix: bytes, record_id: uuid.UUID) -> bytes:
    return prefix + str(record_id).encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) <= NONCE_BYTES:
        raise CredentialUnavailable("the stored credential is truncated")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise CredentialUnavailable(
            "the stored credential does not open (not this target's, or tampered)") from None


def _master(keyring: Keyring, key_id: str) -> bytes:
    key = keyring.get(key_id)
    if key is None:
        raise CredentialUnavailable(f"master key {key_id!r} is not in the keyring")
    return key


def seal(record_id: uuid.UUID, secret: CredentialSecret, keyring: Keyring) -> SealedCredential:
    data_key = AESGCM.generate_key(bit_length=256)
    ciphertext = _encrypt(data_key, secret.to_bytes(), _aad(_SECRET_AAD, record_id))
    wrapped = _encrypt(keyring.active_key, data_key, _aad(_KEY_AAD, record_id))
    return SealedCredential(keyring.active, wrapped, ciphertext)


def open_sealed(record_id: uuid.UUID, sealed: SealedCredential, keyring: Keyring) -> CredentialSecret:
    data_key = _decrypt(_master(keyring, sealed.key_id), sealed.wrapped_key,
                        _aad(_KEY_AAD, record_id))
    return CredentialSecret.from_bytes(
        _decrypt(data_key, sealed.ciphertext, _aad(_SECRET_AAD, record_id)))


def rewrap(record_id: uuid.UUID, sealed: SealedCredential, keyring: Keyring) -> SealedCredential:
    """The same data key (and ciphertext), wrapped under the keyring's active key."""
    aad = _aad(_KEY_AAD, record_id)
    data_key = _decrypt(_master(keyring, sealed.key_id), sealed.wrapped_key, aad)
    return SealedCredential(keyring.active, _encrypt(keyring.active_key, data_key, aad),
                            sealed.ciphertext)
