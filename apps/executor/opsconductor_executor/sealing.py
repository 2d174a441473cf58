"""Secret parameter values at rest: AES-256-GCM under a key from the secret store.

The execution's id is the associated data, so a sealed blob copied onto another execution does
not open. The key is read once and cached; a missing or malformed key is reported without its
value, and a run that needs secrets cannot be created (503) until it is there.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsconductor_contracts.components import EXECUTION_SECRETS_KEY_SECRET, SECRET_STORE
from opsconductor_runtime.interface import Runtime, SecretNotFound

log = logging.getLogger("opsconductor.executor.sealing")

KEY_BYTES = 32
NONCE_BYTES = 12
_AAD = b"opsconductor/executor/secret-values/v1/"


class SecretsUnavailable(Exception):
    """The key is missing or wrong, or a sealed blob does not open (never says more)."""


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode((text or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsUnavailable("the execution secrets key is not base64") from None
    if len(key) != KEY_BYTES:
        raise SecretsUnavailable(f"the execution secrets key is not {KEY_BYTES} bytes")
    return key


def _aad(execution_id: uuid.UUID) -> bytes:
    return _AAD + str(execution_id).encode()


def seal(key: bytes, execution_id: uuid.UUID, values: dict[str, str]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    plaintext = json.dumps(values, separators=(",", ":")).encode()
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(execution_id))


def open_sealed(key: bytes, execution_id: uuid.UUID, blob: bytes) -> dict[str, str]:
    if len(blob) <= NONCE_BYTES:
        raise SecretsUnavailable("the sealed secret values are truncated")
    try:
        plaintext = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                        _aad(execution_id))
    except InvalidTag:
        raise SecretsUnavailable("the sealed secret values do not open") from None
    values = json.loads(plaintext)
    return {str(k): str(v) for k, v in values.items()}


class SecretBox:
    """Seals and opens one execution's secret values with the key from the secret store."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._key: bytes | None = None

    async def key(self) -> bytes:
        if self._key is None:
            try:
                text = await self._runtime.get_secret(SECRET_STORE, EXECUTION_SECRETS_KEY_SECRET)
            except SecretNotFound:
                raise SecretsUnavailable("the execution secrets key is not in the secret store") \
                    from None
            except Exception as exc:
                log.warning("secret store unavailable", extra={"error": type(exc).__name__})
                raise SecretsUnavailable("the secret store is unavailable") from None
            self._key = parse_key(text)
        return self._key

    async def seal(self, execution_id: uuid.UUID, values: dict[str, str]) -> bytes:
        return seal(await self.key(), execution_id, values)

    async def open(self, execution_id: uuid.UUID, blob: bytes) -> dict[str, str]:
        return open_sealed(await self.key(), execution_id, blob)

