"""The keyring as the service sees it: read from the secret store, re-read on every tick and
whenever a row names a master key this replica has not seen yet (rotated elsewhere)."""

from __future__ import annotations

import logging
import uuid

from opsconductor_contracts.components import CREDENTIAL_MASTER_KEY_SECRET, SECRET_STORE
from opsconductor_runtime.interface import Runtime, SecretNotFound
from opsconductor_targets.crypto import (
    CredentialSecret,
    CredentialUnavailable,
    SealedCredential,
    open_sealed,
    seal,
)
from opsconductor_targets.exceptions import CredentialUnreadable, MasterKeyUnavailable
from opsconductor_targets.keyring import Keyring, KeyringError
from opsconductor_targets.models import Credential

log = logging.getLogger("opsconductor.targets.vault")


class CredentialVault:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._keyring: Keyring | None = None

    @property
    def keyring(self) -> Keyring | None:
        return self._keyring

    async def reload(self) -> Keyring | None:
        """Re-read the secret; on failure keep the keyring already held (and say why)."""
        try:
            text = await self._runtime.get_secret(SECRET_STORE, CREDENTIAL_MASTER_KEY_SECRET)
        except SecretNotFound:
            log.error("credential master key secret not found",
                      extra={"secret": CREDENTIAL_MASTER_KEY_SECRET})
            return self._keyring
        except Exception as exc:
            log.warning("secret store unavailable", extra={"error": type(exc).__name__})
            return self._keyring
        try:
            keyring = Keyring.parse(text)
        except KeyringError as exc:
            log.error("credential master key unusable", extra={"reason": str(exc)})
            return self._keyring
        if self._keyring is None or self._keyring.active != keyring.active:
            log.info("credential keyring loaded",
                     extra={"active_key": keyring.active, "keys": len(keyring.keys)})
        self._keyring = keyring
        return keyring

    async def current(self) -> Keyring:
        keyring = self._keyring or await self.reload()
        if keyring is None:
            raise MasterKeyUnavailable()
        return keyring

    async def ready(self) -> None:
        """Readiness: the service cannot store or use credentials without the keyring."""
        await self.current()

    async def seal(self, record_id: uuid.UUID, secret: CredentialSecret) -> SealedCredential:
        return seal(record_id, secret, await self.current())

    async def open(self, row: Credential) -> CredentialSecret:
        keyring = await self.current()
        if keyring.get(row.key_id) is None:
            keyring = await self.reload() or keyring
        sealed = SealedCredential(row.key_id, row.wrapped_key, row.ciphertext)
        try:
            return open_sealed(row.target_id, sealed, keyring)
        except CredentialUnavailable as exc:
            log.error("credential cannot be opened",
                      extra={"target_id": str(row.target_id), "key_id": row.key_id,
                             "reason": str(exc)})
            raise CredentialUnreadable() from None
