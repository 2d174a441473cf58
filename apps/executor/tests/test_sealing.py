"""Secret values at rest: AES-256-GCM bound to the execution id, key from the secret store."""

from __future__ import annotations

import base64
import uuid

import pytest

from opsconductor_contracts.components import EXECUTION_SECRETS_KEY_SECRET
from opsconductor_executor.sealing import SecretBox, SecretsUnavailable, open_sealed, parse_key, seal
from opsconductor_testing.runtime import RecordingRuntime

KEY = bytes(range(32))
VALUES = {"db_password": "Very-Secret-Value-123"}


class TestSeal:
    def test_round_trip_and_no_plaintext(self) -> None:
        execution_id = uuid.uuid4()
        blob = seal(KEY, execution_id, VALUES)
        assert b"Very-Secret-Value-123" not in blob
        assert open_sealed(KEY, execution_id, blob) == VALUES

    def test_each_seal_differs(self) -> None:
        execution_id = uuid.uuid4()
        assert seal(KEY, execution_id, VALUES) != seal(KEY, execution_id, VALUES)

    def test_a_blob_moved_to_another_execution_does_not_open(self) -> None:
        blob = seal(KEY, uuid.uuid4(), VALUES)
        with pytest.raises(SecretsUnavailable):
            open_sealed(KEY, uuid.uuid4(), blob)

    def test_tampering_and_wrong_keys_are_refused(self) -> None:
        execution_id = uuid.uuid4()
        blob = bytearray(seal(KEY, execution_id, VALUES))
        blob[-1] ^= 1
        with pytest.raises(SecretsUnavailable):
            open_sealed(KEY, execution_id, bytes(blob))
        with pytest.raises(SecretsUnavailable):
            open_sealed(bytes(32), execution_id, seal(KEY, execution_id, VALUES))
        with pytest.raises(SecretsUnavailable):
            open_sealed(KEY, execution_id, b"short")


class TestKey:
    @pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"x" * 16).decode()])
    def test_bad_keys_are_refused_without_quoting_them(self, text: str) -> None:
        with pytest.raises(SecretsUnavailable) as caught:
            parse_key(text)
        assert text not in str(caught.value) or not text

    async def test_the_box_reads_the_key_from_the_secret_store(self) -> None:
        runtime = RecordingRuntime(secrets={
            EXECUTION_SECRETS_KEY_SECRET: base64.b64encode(KEY).decode()})
        box = SecretBox(runtime)
        execution_id = uuid.uuid4()
        assert open_sealed(KEY, execution_id, await box.seal(execution_id, VALUES)) == VALUES

    async def test_a_missing_key_is_unavailable(self) -> None:
        with pytest.raises(SecretsUnavailable):
            await SecretBox(RecordingRuntime()).key()
