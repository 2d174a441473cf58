"""Host key pins: what an operator approved, compared with what a server presents."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import asyncssh

_FINGERPRINT = re.compile(r"^SHA256:([A-Za-z0-9+/]{43})=?$")


def fingerprint(key: asyncssh.SSHKey) -> str:
    """OpenSSH's `SHA256:<base64>` fingerprint of a public key."""
    return fingerprint_of_blob(key.public_data)


def fingerprint_of_blob(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def normalize_fingerprint(value: str) -> str:
    """`SHA256:...` (padding dropped); ValueError for anything else."""
    match = _FINGERPRINT.match(value.strip())
    if not match:
        raise ValueError("a host key fingerprint looks like SHA256:<43 base64 characters>")
    return f"SHA256:{match.group(1)}"


@dataclass(frozen=True, slots=True)
class HostKeyPin:
    """The host key an operator approved: its fingerprint, and the key itself when known.

    With the key, only its algorithms are offered in the handshake, so a server that also has
    other host key types presents the pinned one.
    """

    fingerprint: str
    public_key: str | None = None

    @classmethod
    def parse(cls, value: str) -> HostKeyPin:
        """From `SHA256:...` or an OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`)."""
        text = value.strip()
        if text.startswith("SHA256:"):
            return cls(normalize_fingerprint(text))
        return cls.from_public_key(text)

    @classmethod
    def from_public_key(cls, line: str) -> HostKeyPin:
        try:
            key = asyncssh.import_public_key(line.strip())
        except (asyncssh.KeyImportError, ValueError, binascii.Error):
            raise ValueError("not an OpenSSH public key line") from None
        return cls(fingerprint(key), key.export_public_key("openssh").decode().strip())

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", normalize_fingerprint(self.fingerprint))
        if self.public_key is not None:
            key = asyncssh.import_public_key(self.public_key)
            if fingerprint(key) != self.fingerprint:
                raise ValueError("the public key does not have the pinned fingerprint")

    def matches(self, key: asyncssh.SSHKey) -> bool:
        return fingerprint(key) == self.fingerprint

    @property
    def algorithms(self) -> list[str] | None:
        """Host key algorithms to offer, or None for the defaults (fingerprint-only pin)."""
        if self.public_key is None:
            return None
        key = asyncssh.import_public_key(self.public_key)
        return [alg.decode() for alg in key.sig_algorithms]


@dataclass(frozen=True, slots=True)
class HostKeyProbe:
    """What a server presented before any authentication."""

    fingerprint: str
    public_key: str
    algorithm: str
    latency_ms: float

    def pin(self) -> HostKeyPin:
        return HostKeyPin(self.fingerprint, self.public_key)
