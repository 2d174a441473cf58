"""Envelope encryption and the keyring, without a database."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from opsconductor_targets.crypto import (
    CredentialSecret,
    CredentialUnavailable,
    SealedCredential,
    open_sealed,
    rewrap,
    seal,
)
from opsconductor_targets.keyring import LEGACY_KEY_ID, Keyring, KeyringError

SECRET = CredentialSecret(password="Pa55-word-that-matters")


class TestSeal:
    def test_round_trip(self) -> None:
        keyring, record = Keyring.generate(), uuid.uuid4()
        sealed = seal(record, SECRET, keyring)
        assert sealed.key_id == keyring.active
        assert b"Pa55-word" not in sealed.ciphertext + sealed.wrapped_key
        assert open_sealed(record, sealed, keyring).password == SECRET.password

    def test_each_seal_uses_a_fresh_data_key_and_nonce(self) -> None:
        keyring, record = Keyring.generate(), uuid.uuid4()
        first, second = seal(record, SECRET, keyring), seal(record, SECRET, keyring)
        assert first.ciphertext != second.ciphertext
        assert first.wrapped_key != second.wrapped_key

    def test_a_copy_in_another_row_does_not_open(self) -> None:
        keyring = Keyring.generate()
        sealed = seal(uuid.uuid4(), SECRET, keyring)
        with pytest.raises(CredentialUnavailable):
            open_sealed(uuid.uuid4(), sealed, keyring)

    def test_only_the_ciphertext_copied_does_not_open_either(self) -> None:
        keyring, mine, theirs = Keyring.generate(), uuid.uuid4(), uuid.uuid4()
        own = seal(mine, CredentialSecret(password="mine-mine-mine"), keyring)
        stolen = seal(theirs, SECRET, keyring)
        with pytest.raises(CredentialUnavailable):
            open_sealed(mine, SealedCredential(own.key_id, own.wrapped_key, stolen.ciphertext),
                        keyring)

    def test_a_flipped_bit_is_detected(self) -> None:
        keyring, record = Keyring.generate(), uuid.uuid4()
        sealed = seal(record, SECRET, keyring)
        tampered = bytearray(sealed.ciphertext)
        tampered[-1] ^= 1
        with pytest.raises(CredentialUnavailable):
            open_sealed(record, SealedCredential(sealed.key_id, sealed.wrapped_key,
                                                 bytes(tampered)), keyring)

    def test_another_master_key_does_not_open(self) -> None:
        record = uuid.uuid4()
        sealed = seal(record, SECRET, Keyring.generate())
        stranger = Keyring.generate()
        impostor = Keyring(sealed.key_id, {sealed.key_id: stranger.active_key})
        with pytest.raises(CredentialUnavailable):
            open_sealed(record, sealed, impostor)
        with pytest.raises(CredentialUnavailable, match="not in the keyring"):
            open_sealed(record, sealed, stranger)

    def test_reprs_hide_everything(self) -> None:
        keyring = Keyring.generate()
        sealed = seal(uuid.uuid4(), SECRET, keyring)
        text = repr(SECRET) + repr(sealed) + repr(keyring)
        assert "Pa55" not in text
        assert base64.b64encode(keyring.active_key).decode() not in text


class TestRotation:
    def test_rewrap_moves_the_data_key_and_keeps_the_ciphertext(self) -> None:
        old, record = Keyring.generate(), uuid.uuid4()
        sealed = seal(record, SECRET, old)
        new = old.rotated()
        assert new.active != old.active and old.active in new.keys
        moved = rewrap(record, sealed, new)
        assert moved.key_id == new.active
        assert moved.ciphertext == sealed.ciphertext
        assert moved.wrapped_key != sealed.wrapped_key
        # Once re-wrapped, the old key can leave the ring.
        retired = new.without({old.active})
        assert open_sealed(record, moved, retired).password == SECRET.password
        with pytest.raises(CredentialUnavailable):
            open_sealed(record, sealed, retired)

    def test_rewrap_is_bound_to_the_row_too(self) -> None:
        keyring = Keyring.generate()
        sealed = seal(uuid.uuid4(), SECRET, keyring)
        with pytest.raises(CredentialUnavailable):
            rewrap(uuid.uuid4(), sealed, keyring.rotated())


class TestKeyring:
    def test_json_round_trip(self) -> None:
        keyring = Keyring.generate().rotated()
        again = Keyring.parse(keyring.dumps())
        assert again.active == keyring.active
        assert again.keys == keyring.keys

    def test_a_bare_base64_key_is_a_keyring_of_one(self) -> None:
        raw = bytes(range(32))
        keyring = Keyring.parse(base64.b64encode(raw).decode())
        assert keyring.active == LEGACY_KEY_ID
        assert keyring.active_key == raw
        rotated = keyring.rotated()
        assert set(rotated.keys) == {LEGACY_KEY_ID, rotated.active}

    @pytest.mark.parametrize("text", [
        "", "not base64!", base64.b64encode(b"short").decode(), "{not json",
        json.dumps({"active": "a", "keys": {}}),
        json.dumps({"active": "a", "keys": {"a": base64.b64encode(b"x" * 31).decode()}}),
        json.dumps({"active": "a b", "keys": {"a b": base64.b64encode(b"x" * 32).decode()}}),
        json.dumps(["a"]),
    ])
    def test_unusable_secrets_are_refused_without_quoting_them(self, text: str) -> None:
        with pytest.raises(KeyringError) as info:
            Keyring.parse(text)
        assert base64.b64encode(b"x" * 32).decode() not in str(info.value)

    def test_the_active_key_cannot_be_retired(self) -> None:
        keyring = Keyring.generate()
        with pytest.raises(KeyringError):
            keyring.without({keyring.active})
