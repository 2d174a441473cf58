"""ExecutorClient at the runtime port: the run body reaches the executor whole; refusals come back
as the same domain errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from opsconductor_contracts.clients.executor import ExecutorClient
from opsconductor_contracts.jobspec import RunRequest
from opsconductor_core.problems import (
    Conflict,
    DomainError,
    InvalidInput,
    ServiceUnavailable,
    TooManyRequests,
)
from opsconductor_testing.runtime import RecordingRuntime

RUN = RunRequest(job_id="j1", job_name="deploy", job_version=3, requested_by="u1",
                 steps=[{"name": "a", "kind": "command", "command": "echo {{ pw }}"}],
                 parameters=[{"name": "pw", "type": "secret"}], secret_values={"pw": "s3cret!"},
                 targets=[{"target_id": "t1", "name": "web1", "protocol": "ssh"}])


def executor(status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
             seen: list[dict[str, Any]] | None = None) -> FastAPI:
    app = FastAPI()

    @app.post("/internal/executions")
    async def create(request: Request) -> JSONResponse:
        if seen is not None:
            seen.append(json.loads(await request.body()))
        return JSONResponse(body, status_code=status, headers=headers)

    return app


async def test_the_whole_run_reaches_the_executor() -> None:
    runtime = RecordingRuntime(app_id="jobs")
    seen: list[dict[str, Any]] = []
    runtime.mount("executor", executor(201, {"execution_id": "e-1"}, seen=seen))
    assert await ExecutorClient(runtime).create_execution(RUN) == "e-1"
    assert seen[0]["secret_values"] == {"pw": "s3cret!"}
    assert RunRequest.model_validate(seen[0]) == RUN
    assert "s3cret!" not in repr(RUN)


@pytest.mark.parametrize(("status", "error", "errors"), [
    (409, Conflict, None), (422, InvalidInput, {"steps": "bad"}), (400, InvalidInput, None),
    (502, ServiceUnavailable, None)])
async def test_refusals(status: int, error: type[DomainError],
                        errors: dict[str, str] | None) -> None:
    runtime = RecordingRuntime(app_id="jobs")
    problem: dict[str, Any] = {"status": status, "title": "x", "detail": "nope"}
    if errors:
        problem["errors"] = errors
    runtime.mount("executor", executor(status, problem))
    with pytest.raises(error) as caught:
        await ExecutorClient(runtime).create_execution(RUN)
    assert caught.value.status == error.status
    if status < 500:
        assert caught.value.detail == "nope" and caught.value.errors == errors


async def test_busy_carries_retry_after() -> None:
    runtime = RecordingRuntime(app_id="jobs")
    runtime.mount("executor", executor(429, {"status": 429, "detail": "slow down"},
                                       headers={"Retry-After": "7"}))
    with pytest.raises(TooManyRequests) as caught:
        await ExecutorClient(runtime).create_execution(RUN)
    assert caught.value.headers == {"Retry-After": "7"}


async def test_unreachable_is_503_and_the_reason_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """The run's caller sees only 503; the operator finds why in the log, without the run."""
    with caplog.at_level(logging.WARNING, "opsconductor"), pytest.raises(ServiceUnavailable):
        await ExecutorClient(RecordingRuntime(app_id="jobs")).create_execution(RUN)
    [record] = [r for r in caplog.records if r.getMessage() == "service unavailable"]
    assert record.__dict__["app_id"] == "executor"
    assert "executor" in record.__dict__["reason"]
    assert "s3cret!" not in caplog.text


async def test_an_unexpected_status_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    runtime = RecordingRuntime(app_id="jobs")
    runtime.mount("executor", executor(500, {"detail": "boom"}))
    with caplog.at_level(logging.WARNING, "opsconductor"), pytest.raises(ServiceUnavailable):
        await ExecutorClient(runtime).create_execution(RUN)
    [record] = [r for r in caplog.records if r.getMessage() == "unexpected answer"]
    assert record.__dict__["status"] == 500
