"""Pure parts of the Dapr adapter (the behaviour against a real sidecar: tests/dapr/)."""

from __future__ import annotations

import grpc
import pytest

from opsconductor_runtime.dapr.invocation import request_headers, sidecar_error
from opsconductor_runtime.dapr.runtime import describe, grpc_code
from opsconductor_runtime.factory import runtime_from_env
from opsconductor_runtime.interface import InvokeResponse


class _Rpc(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"<rpc {code}>\n debug string")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class TestSidecarErrors:
    def test_the_sidecars_own_error_is_told_from_an_apps_answer(self) -> None:
        json_ct = {"content-type": "application/json"}
        denied = InvokeResponse(403, b'{"errorCode":"ERR_DIRECT_INVOKE","message":"denied"}', json_ct)
        assert sidecar_error(denied) == "ERR_DIRECT_INVOKE"
        # An app's own 4xx/5xx, even as JSON, is the app's answer.
        for body, headers in [(b'{"status": 403, "title": "Forbidden"}',
                               {"content-type": "application/problem+json"}),
                              (b'{"errorCode": "quota"}', json_ct), (b"not json", json_ct)]:
            assert sidecar_error(InvokeResponse(403, body, headers)) is None
        assert sidecar_error(InvokeResponse(200, denied.body, json_ct)) is None

    def test_grpc_status_is_found_through_the_sdks_wrapping(self) -> None:
        rpc = _Rpc(grpc.StatusCode.ABORTED, "possible etag mismatch")
        try:
            try:
                raise rpc
            except _Rpc as inner:
                raise RuntimeError("failed saving state") from inner
        except RuntimeError as outer:
            assert grpc_code(outer) is grpc.StatusCode.ABORTED
        assert grpc_code(ValueError("plain")) is None
        assert describe(rpc) == "possible etag mismatch"


class TestHeaders:
    def test_one_content_type_in_the_sdks_spelling(self) -> None:
        sent = request_headers({"content-type": "text/plain", "X-Correlation-ID": "c"}, None)
        assert sent == {"Content-Type": "text/plain", "X-Correlation-ID": "c"}
        assert request_headers({}, "application/json") == {"Content-Type": "application/json"}
        # The caller's own content type wins over the JSON default.
        assert request_headers({"Content-Type": "application/x"}, "application/json") == {
            "Content-Type": "application/x"}


class TestFactory:
    def test_dapr_mode_gives_the_dapr_adapter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPSC_RUNTIME", "dapr")
        runtime = runtime_from_env("users")
        assert type(runtime).__name__ == "DaprRuntime" and runtime.app_id == "users"

    def test_an_app_alone_without_dapr_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("OPSC_RUNTIME", raising=False)
        with pytest.raises(RuntimeError, match="opsconductor up"):
            runtime_from_env("users")
