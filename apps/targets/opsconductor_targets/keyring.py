"""The credential master keyring, as stored in the secret store.

    {"active": "<key id>", "keys": {"<key id>": "<base64 of 32 random bytes>", ...}}

New data keys are wrapped under the active key; older keys stay in the ring so credentials
wrapped under them still open until the service has re-wrapped them (see crypto.rewrap).
`opsconductor keys rotate` adds a new active key with `rotated()`. A bare base64 key (the
first release's format) reads as a keyring holding that one key under the id `legacy`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

KEY_BYTES = 32
LEGACY_KEY_ID = "legacy"
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyringError(ValueError):
    """The secret is not a usable keyring (the message never quotes key material)."""


def _decode_key(value: object, key_id: str) -> bytes:
    if not isinstance(value, str):
        raise KeyringError(f"key {key_id!r} is not a base64 string")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"key {key_id!r} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(f"key {key_id!r} is not {KEY_BYTES} bytes")
    return raw


@dataclass(frozen=True, repr=False)
class Keyring:
    active: str
    keys: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyringError("the active key is not in the keyring")
        for key_id in self.keys:
            if not _KEY_ID.match(key_id):
                raise KeyringError("a key id may use 1 to 64 of A-Z a-z 0-9 . _ -")

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active]

    def get(self, key_id: str) -> bytes | None:
        return self.keys.get(key_id)

    def __repr__(self) -> str:  # never the key bytes
        return f"Keyring(active={self.active!r}, ids={sorted(self.keys)!r})"

    # --- the secret's text ---------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Keyring:
        text = (text or "").strip()
        if not text:
            raise KeyringError("the credential master key secret is empty")
        if not text.startswith("{"):
            return cls(LEGACY_KEY_ID, {LEGACY_KEY_ID: _decode_key(text, LEGACY_KEY_ID)})
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise KeyringError("the credential master key secret is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise KeyringError('the keyring needs "active" and "keys"')
        active = data.get("active")
        if not isinstance(active, str):
            raise KeyringError('the keyring needs "active" (a key id)')
        keys = {str(k): _decode_key(v, str(k)) for k, v in data["keys"].items()}
        return cls(active, keys)

    def dumps(self) -> str:
        return json.dumps({"active": self.active,
                           "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}},
                          sort_keys=True)

    # --- making and rotating -------------------------------------------------------------------

    @classmethod
    def generate(cls) -> Keyring:
        key_id = new_key_id()
        return cls(key_id, {key_id: secrets.token_bytes(KEY_BYTES)})

    def rotated(self) -> Keyring:
        """This keyring plus a fresh key that becomes the active one."""
        key_id = new_key_id()
        while key_id in self.keys:  # pragma: no cover - two rotations in one second
            key_id = new_key_id()
        return Keyring(key_id, {**self.keys, key_id: secrets.token_bytes(KEY_BYTES)})

    def without(self, key_ids: set[str]) -> Keyring:
        """Drop retired keys (never the active one)."""
        if self.active in key_ids:
            raise KeyringError("the active key cannot be removed")
        return Keyring(self.active, {k: v for k, v in self.keys.items() if k not in key_ids})


def new_key_id() -> str:
    # Sortable by creation time, unique enough for a handful of rotations a year.
    return f"k{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def new_keyring_secret() -> str:
    """The secret factory for a fresh data dir."""
    return Keyring.generate().dumps()
