"""`opsconductor run`: parsing and errors, and following a live stream from a fake platform
served by a real uvicorn on a loopback port (the CLI's HTTP client is synchronous, so the
server runs in its own thread)."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from typer.testing import CliRunner

from opsconductor_platform.cli import app as cli
from opsconductor_platform.follow import Display, parameter_values, parse_sse

API_TOKEN = "opsc_api_token"
WEB, DB = str(uuid.uuid4()), str(uuid.uuid4())


def problem(status: int, title: str, errors: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"title": title, "status": status, "detail": title}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class FakePlatform:
    """The slice of the public API the command uses, with a scripted execution stream."""

    def __init__(self) -> None:
        self.jobs = [
            {"id": str(uuid.uuid4()), "name": "deploy", "parameters": [
                {"name": "version", "type": "string", "required": True},
                {"name": "count", "type": "int"}, {"name": "dry", "type": "bool"}]},
            {"id": str(uuid.uuid4()), "name": "patch", "parameters": []},
        ]
        self.execution_id = str(uuid.uuid4())
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.targets = [{"target_id": WEB, "name": "web-01"}, {"target_id": DB, "name": ""}]
        self.target_names = {DB: "db-01"}
        self.runs: list[dict[str, Any]] = []
        self.last_event_ids: list[str | None] = []
        self.drop_after: int | None = None  # first connection dies after this seq
        self.end_early_after: int | None = None  # first connection ends cleanly after this seq
        self.overlap = 0  # reconnections replay this many already-sent events
        self.refuse_run: Response | None = None
        self.tokens = {API_TOKEN}
        self.app = Starlette(routes=[
            Route("/api/v1/auth/login", self.login, methods=["POST"]),
            Route("/api/v1/jobs", self.list_jobs),
            Route("/api/v1/jobs/{job_id}", self.get_job),
            Route("/api/v1/jobs/{job_id}/run", self.run, methods=["POST"]),
            Route("/api/v1/executions/{execution_id}/targets", self.execution_targets),
            Route("/api/v1/executions/{execution_id}/events", self.stream),
            Route("/api/v1/targets/{target_id}", self.get_target),
        ])

    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    async def login(self, request: Request) -> Response:
        body = await request.json()
        if (body["username"], body["password"]) != ("ops", "s3cret"):
            return problem(401, "Unauthorized")
        self.tokens.add("access-1")
        return JSONResponse({"access_token": "access-1", "refresh_token": "refresh-1",
                             "token_type": "bearer", "expires_in": 900})

    async def list_jobs(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        return JSONResponse({"items": self.jobs, "next_cursor": None})

    async def get_job(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        for job in self.jobs:
            if job["id"] == request.path_params["job_id"]:
                return JSONResponse(job)
        return problem(404, "Not found")

    async def run(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        self.runs.append({"job_id": request.path_params["job_id"], **await request.json()})
        if self.refuse_run is not None:
            return self.refuse_run
        return JSONResponse({"execution_id": self.execution_id}, status_code=202)

    async def execution_targets(self, request: Request) -> Response:
        return JSONResponse({"items": self.targets, "next_cursor": None})

    async def get_target(self, request: Request) -> Response:
        name = self.target_names.get(request.path_params["target_id"])
        return JSONResponse({"name": name}) if name else problem(404, "Not found")

    async def stream(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        last = request.headers.get("last-event-id")
        self.last_event_ids.append(last)
        first = len(self.last_event_ids) == 1
        after = int(last) - self.overlap if last else 0

        async def events() -> AsyncIterator[bytes]:
            yield b": ping\n\n"
            for seq, name, data in self.events:
                if seq <= after:
                    continue
                yield f"id: {seq}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()
                if first and seq == self.drop_after:
                    raise ConnectionAbortedError("connection dropped (test)")
                if first and seq == self.end_early_after:
                    return

        return StreamingResponse(events(), media_type="text/event-stream")

    # -- scripting -------------------------------------------------------------------------
    def script(self, *, outcome: str = "succeeded", db_status: str = "succeeded") -> None:
        seq = iter(range(1, 100))
        ts = "2025-01-02T03:04:05Z"

        def out(target: str, text: str, stream: str = "stdout") -> tuple[int, str, dict]:
            return next(seq), "output", {"target_id": target, "stream": stream, "data": text,
                                         "ts": ts}

        self.events = [
            (next(seq), "started", {"total_targets": 2}),
            out(WEB, "hello from web\nsecond "),
            out(DB, "db says hi\n"),
            out(WEB, "line\n"),
            out(DB, "disk almost full\n", "stderr"),
            (next(seq), "target_finished", {"target_id": WEB, "status": "succeeded",
                                            "exit_code": 0}),
            out(DB, "no newline at the end"),
            (next(seq), "target_finished", {"target_id": DB, "status": db_status,
                                            "exit_code": 0 if db_status == "succeeded" else 3}),
            (next(seq), "finished", {"status": outcome, "counts": {"total": 2}}),
        ]


@pytest.fixture
def platform() -> Iterator[tuple[FakePlatform, str]]:
    fake = FakePlatform()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, lifespan="off", log_config=None,
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def run(platform: tuple[FakePlatform, str]) -> Callable[..., Any]:
    _, url = platform
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
        # "" in `env` unsets a variable (CliRunner unsets the ones mapped to None).
        environment: dict[str, str | None] = {"OPSC_TOKEN": API_TOKEN, "OPSC_PASSWORD": None}
        environment.update({k: v or None for k, v in (env or {}).items()})
        return runner.invoke(cli, ["run", *args, "--url", url], env=environment)

    return invoke


class TestStart:
    def test_prints_the_execution_id_and_sends_typed_values(self, run, platform):
        fake, _ = platform
        result = run("deploy", "--param", "version=1.2", "-p", "count=3", "-p", "dry=yes",
                     "--target-tag", "web", "--target-tag", "eu")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == fake.execution_id
        assert fake.runs == [{"job_id": fake.jobs[0]["id"],
                              "parameters": {"version": "1.2", "count": 3, "dry": True},
                              "targets": {"tags": ["web", "eu"]}}]

    def test_a_job_by_its_id(self, run, platform):
        fake, _ = platform
        result = run(fake.jobs[1]["id"])
        assert result.exit_code == 0, result.output
        assert fake.runs[0] == {"job_id": fake.jobs[1]["id"], "parameters": {}}

    def test_logs_in_with_a_password_from_the_environment(self, run, platform):
        fake, _ = platform
        result = run("patch", "--username", "ops",
                     env={"OPSC_TOKEN": "", "OPSC_PASSWORD": "s3cret"})
        assert result.exit_code == 0, result.output
        assert len(fake.runs) == 1

    def test_a_wrong_password_is_an_auth_error(self, run):
        result = run("patch", "--username", "ops", env={"OPSC_PASSWORD": "wrong"})
        assert result.exit_code == 2
        assert "login failed" in result.stderr
        assert "wrong" not in result.output

    def test_no_credentials_is_a_usage_error(self, run):
        result = run("patch", env={"OPSC_TOKEN": ""})
        assert result.exit_code == 2
        assert "OPSC_TOKEN" in result.stderr

    def test_no_password_and_no_terminal_is_a_usage_error(self, run):
        result = run("patch", "--username", "ops", env={"OPSC_TOKEN": ""})
        assert result.exit_code == 2
        assert "OPSC_PASSWORD" in result.stderr

    def test_a_rejected_token_is_an_auth_error(self, run):
        result = run("patch", env={"OPSC_TOKEN": "nope"})
        assert result.exit_code == 2
        assert "401" in result.stderr

    def test_an_unknown_job(self, run):
        result = run("no-such-job")
        assert result.exit_code == 2
        assert "no job with the id or name 'no-such-job'" in result.stderr

    @pytest.mark.parametrize(("arg", "message"), [
        ("version", "expected name=value"),
        ("count=many", "not a whole number"),
        ("dry=perhaps", "not true or false"),
    ])
    def test_bad_parameter_values(self, run, platform, arg, message):
        fake, _ = platform
        result = run("deploy", "--param", arg)
        assert result.exit_code == 2
        assert message in result.stderr
        assert fake.runs == []

    def test_a_refused_run_shows_the_field_errors(self, run, platform):
        fake, _ = platform
        fake.refuse_run = problem(422, "Validation failed",
                                  {"parameters.version": "is required"})
        result = run("deploy")
        assert result.exit_code == 2
        assert "parameters.version: is required" in result.stderr

    def test_an_unreachable_platform(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        result = CliRunner().invoke(cli, ["run", "patch", "--url", f"http://127.0.0.1:{port}"],
                                    env={"OPSC_TOKEN": API_TOKEN})
        assert result.exit_code == 1
        assert "cannot reach" in result.stderr


class TestFollow:
    def test_shows_output_by_target_name_and_succeeds(self, run, platform):
        fake, _ = platform
        fake.script()
        result = run("patch", "--follow")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0] == fake.execution_id
        assert lines[1:] == ["[web-01] hello from web", "[db-01] db says hi",
                             "[web-01] second line", "[db-01] no newline at the end"]
        assert "[db-01] disk almost full" in result.stderr.splitlines()
        assert "[web-01] succeeded (exit 0)" in result.stderr
        assert "[2/2 done]" in result.stderr
        assert f"execution {fake.execution_id} succeeded" in result.stderr

    def test_a_failed_execution_exits_1(self, run, platform):
        fake, _ = platform
        fake.script(outcome="failed", db_status="failed")
        result = run("patch", "--follow")
        assert result.exit_code == 1
        assert "[db-01] failed (exit 3)" in result.stderr
        assert "[2/2 done, 1 failed]" in result.stderr

    def test_a_dropped_connection_resumes_without_duplicates(self, run, platform):
        fake, _ = platform
        fake.script()
        fake.drop_after = 3
        fake.overlap = 1  # the server even replays one: the command still shows it once
        result = run("patch", "--follow")
        assert result.exit_code == 0, result.output
        assert fake.last_event_ids == [None, "3"]
        assert result.stdout.splitlines()[1:] == [
            "[web-01] hello from web", "[db-01] db says hi", "[web-01] second line",
            "[db-01] no newline at the end"]
        assert result.stderr.count("db says hi") == 0
        assert result.stderr.count("[web-01] succeeded") == 1

    def test_a_stream_that_ends_early_is_resumed(self, run, platform):
        fake, _ = platform
        fake.script()
        fake.end_early_after = 6
        result = run("patch", "--follow")
        assert result.exit_code == 0, result.output
        assert fake.last_event_ids == [None, "6"]
        assert result.stdout.count("[web-01] second line") == 1


class TestDisplay:
    def test_a_terminal_gets_one_redrawn_progress_line(self):
        out, err = io.StringIO(), io.StringIO()
        display = Display(out, err, tty=True)
        display.progress("[0/2 done]")
        display.line("[web] hi")
        display.progress("[1/2 done]")
        display.close()
        assert out.getvalue() == "[web] hi\n"
        assert err.getvalue() == ("\r\x1b[K[0/2 done]" "\r\x1b[K" "\r\x1b[K[0/2 done]"
                                  "\r\x1b[K[1/2 done]" "\n")

    def test_elsewhere_progress_is_printed_now_and_then(self):
        now = [0.0]
        err = io.StringIO()
        display = Display(io.StringIO(), err, tty=False, interval_s=5, clock=lambda: now[0])
        display.progress("[0/3 done]")
        display.progress("[1/3 done]")
        now[0] = 6
        display.progress("[2/3 done]")
        display.progress("[3/3 done]", force=True)
        assert err.getvalue().splitlines() == ["[0/3 done]", "[2/3 done]", "[3/3 done]"]


class TestParseSse:
    def test_events_comments_and_multiline_data(self):
        lines = [": ping", "", "id: 4", "event: output", "data: {\"a\":", "data: 1}", "",
                 "event: resync", "data: {}", ""]
        events = list(parse_sse(lines))
        assert [(e.event, e.id, e.data) for e in events] == [
            ("output", "4", "{\"a\":\n1}"), ("resync", None, "{}")]


class TestParameterValues:
    JOB = {"parameters": [{"name": "password", "type": "secret", "required": True},
                          {"name": "token", "type": "secret"},
                          {"name": "n", "type": "int"}]}

    def test_a_required_secret_left_out_is_asked_for(self):
        asked: list[str] = []

        def ask(name: str) -> str:
            asked.append(name)
            return "typed-in"

        assert parameter_values(self.JOB, ["n=2"], ask) == {"n": 2, "password": "typed-in"}
        assert asked == ["password"]

    def test_a_given_secret_is_not_asked_for(self):
        values = parameter_values(self.JOB, ["password=x"], lambda name: pytest.fail(name))
        assert values == {"password": "x"}

    def test_a_value_may_contain_equals_signs(self):
        assert parameter_values({"parameters": []}, ["q=a=b"]) == {"q": "a=b"}
