"""The service factory's edge: correlation ids, JSON logs, health, readiness and metrics."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client.parser import text_string_to_metric_families

from opsconductor_core import __version__
from opsconductor_core.app import ReadinessCheck, create_service_app
from opsconductor_core.context import current_correlation_id, outgoing_headers
from opsconductor_core.logging import JsonFormatter, configure_logging
from opsconductor_core.settings import PlatformSettings

ClientFactory = Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

router = APIRouter()
log = logging.getLogger("opsconductor.test.app")


@router.get("/echo")
async def echo() -> dict[str, object]:
    log.info("handling echo", extra={"target_id": "t-1"})
    return {"correlation_id": current_correlation_id(), "outgoing": outgoing_headers()}


@router.get("/crash")
async def crash() -> None:
    raise ValueError("broken")


@router.get("/things/{thing_id}")
async def thing(thing_id: str) -> dict[str, str]:
    return {"id": thing_id}


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _app(settings: PlatformSettings, readiness: Sequence[ReadinessCheck] = ()) -> FastAPI:
    return create_service_app("things", settings, routers=[router], readiness=readiness)


class TestCorrelationId:
    async def test_a_safe_id_is_echoed_and_in_force_during_the_request(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async with client_for(_app(settings)) as client:
            response = await client.get("/echo", headers={"X-Correlation-ID": "job-42:run.7"})

        assert response.headers["x-correlation-id"] == "job-42:run.7"
        assert response.json()["correlation_id"] == "job-42:run.7"
        assert response.json()["outgoing"] == {"X-Correlation-ID": "job-42:run.7"}

    async def test_one_is_minted_when_absent(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async with client_for(_app(settings)) as client:
            first = await client.get("/echo")
            second = await client.get("/echo")

        minted = first.headers["x-correlation-id"]
        assert UUID_RE.match(minted)
        assert first.json()["correlation_id"] == minted
        assert second.headers["x-correlation-id"] != minted

    @pytest.mark.parametrize("unsafe", [
        "has space", "quote\"d", "<script>alert(1)</script>", "x" * 129, "new\\nline", "",
    ])
    async def test_unsafe_ids_are_replaced(
        self, settings: PlatformSettings, client_for: ClientFactory, unsafe: str
    ) -> None:
        async with client_for(_app(settings)) as client:
            response = await client.get("/echo", headers={"X-Correlation-ID": unsafe})

        assert response.headers["x-correlation-id"] != unsafe
        assert UUID_RE.match(response.headers["x-correlation-id"])

    async def test_a_valid_traceparent_is_passed_on_and_a_bad_one_dropped(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async with client_for(_app(settings)) as client:
            good = await client.get("/echo", headers={"traceparent": TRACEPARENT})
            bad = await client.get("/echo", headers={"traceparent": "00-zz-bad"})

        assert good.json()["outgoing"]["traceparent"] == TRACEPARENT
        assert "traceparent" not in bad.json()["outgoing"]

    async def test_an_app_cannot_override_the_header(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        spoof = APIRouter()

        @spoof.get("/spoof")
        async def spoofing() -> Response:
            return JSONResponse({}, headers={"X-Correlation-ID": "forged"})

        app = create_service_app("things", settings, routers=[spoof])
        async with client_for(app) as client:
            response = await client.get("/spoof", headers={"X-Correlation-ID": "mine"})

        assert response.headers.get_list("x-correlation-id") == ["mine"]

    async def test_error_responses_carry_it_too(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async with client_for(_app(settings)) as client:
            missing = await client.get("/nope", headers={"X-Correlation-ID": "c-404"})
            crashed = await client.get("/crash", headers={"X-Correlation-ID": "c-500"})
            too_big = await client.post("/echo", content=b"x" * 5000,
                                        headers={"X-Correlation-ID": "c-413"})

        assert missing.headers["x-correlation-id"] == "c-404"
        assert crashed.status_code == 500 and crashed.headers["x-correlation-id"] == "c-500"
        assert too_big.status_code == 413 and too_big.headers["x-correlation-id"] == "c-413"


class TestJsonLogs:
    async def test_log_lines_carry_the_correlation_id_and_extras(
        self, settings: PlatformSettings, client_for: ClientFactory, captured_logs: io.StringIO
    ) -> None:
        async with client_for(_app(settings)) as client:
            await client.get("/echo", headers={"X-Correlation-ID": "log-me-1",
                                               "traceparent": TRACEPARENT})

        line = next(e for e in _lines(captured_logs) if e["message"] == "handling echo")
        assert line["correlation_id"] == "log-me-1"
        assert line["traceparent"] == TRACEPARENT
        assert line["target_id"] == "t-1"
        assert line["level"] == "info"
        assert line["logger"] == "opsconductor.test.app"
        assert str(line["ts"]).endswith("Z")

    async def test_unhandled_error_is_logged_with_trace_and_correlation_id(
        self, settings: PlatformSettings, client_for: ClientFactory, captured_logs: io.StringIO
    ) -> None:
        async with client_for(_app(settings)) as client:
            response = await client.get("/crash", headers={"X-Correlation-ID": "crash-1"})

        errors = [e for e in _lines(captured_logs) if e["level"] == "error"]
        assert len(errors) == 1
        assert errors[0]["correlation_id"] == "crash-1"
        assert "ValueError: broken" in str(errors[0]["exception"])
        assert "broken" not in response.text

    def test_no_correlation_id_outside_a_request(self, captured_logs: io.StringIO) -> None:
        logging.getLogger("opsconductor.test.app").warning("background work")

        (line,) = _lines(captured_logs)
        assert "correlation_id" not in line
        assert line["level"] == "warning"

    def test_configure_logging_installs_one_json_handler(self) -> None:
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        try:
            configure_logging("debug")
            configure_logging("warning")
            json_handlers = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
            assert len(json_handlers) == 1
            assert root.level == logging.WARNING
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)


class TestProbes:
    async def test_healthz_says_who_is_alive(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async with client_for(_app(settings)) as client:
            response = await client.get("/healthz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok", "service": "things", "version": __version__}

    async def test_readyz_is_200_when_every_check_passes(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        calls: list[str] = []

        async def database() -> None:
            calls.append("database")

        async with client_for(_app(settings, readiness=[database])) as client:
            response = await client.get("/readyz")

        assert response.status_code == 200
        assert response.json() == {"status": "ready", "service": "things"}
        assert calls == ["database"]

    async def test_readyz_is_503_naming_the_failed_check_without_details(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async def database() -> None:
            return None

        async def broker() -> None:
            raise ConnectionError("amqp://guest:secret@10.0.0.5 refused")

        async with client_for(_app(settings, readiness=[database, broker])) as client:
            response = await client.get("/readyz")

        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "service": "things",
                                   "failures": {"broker": "ConnectionError"}}
        assert "secret" not in response.text


class TestMetrics:
    async def test_requests_are_counted_by_route_template_and_timed(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        async with client_for(_app(settings)) as client:
            for _ in range(3):
                await client.get(f"/things/{uuid.uuid4()}")
            await client.get("/nope")
            response = await client.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        counts = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
                  for s in families["http_requests"].samples if s.name == "http_requests_total"}
        assert counts[("GET", "/things/{thing_id}", "200")] == 3
        assert counts[("GET", "unmatched", "404")] == 1
        durations = {s.labels["route"]: s.value
                     for s in families["http_request_duration_seconds"].samples
                     if s.name == "http_request_duration_seconds_sum"}
        assert 0 < durations["/things/{thing_id}"] < 5  # seconds, not a clock reading

    async def test_each_app_has_its_own_registry(
        self, settings: PlatformSettings, client_for: ClientFactory
    ) -> None:
        first, second = _app(settings), _app(settings)
        async with client_for(first) as client:
            await client.get("/healthz")
        async with client_for(second) as client:
            text = (await client.get("/metrics")).text

        assert 'route="/healthz"' not in text
