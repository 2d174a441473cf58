"""`opsconductor run JOB --follow`: start a run through the API and follow its live output.

The stream is the gateway's Server-Sent Events (`/api/v1/executions/{id}/events`); every message
id is the execution's sequence number, so a dropped connection resumes with Last-Event-ID and
nothing is shown twice. Output lines are prefixed by the target's name; a progress line counts
finished targets (redrawn in place on a terminal, printed now and then otherwise).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

API = "/api/v1"
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "timed_out", "interrupted"})
USAGE, FAILED = 2, 1


class CliError(Exception):
    """Ends the command with a message and an exit code (2: usage or auth, 1: anything else)."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def explain(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    lines = [f"{body.get('title', 'Error')} ({response.status_code}): {body.get('detail', '')}"]
    for where, message in (body.get("errors") or {}).items():
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def fail(response: httpx.Response, what: str) -> CliError:
    code = USAGE if response.status_code in (400, 401, 403, 404, 422) else FAILED
    return CliError(f"{what}: {explain(response)}", code)


class ApiSession:
    """An API client with a bearer token; a password login is refreshed when it expires."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                   transport=transport)
        self.token = token
        self.refresh_token: str | None = None

    def close(self) -> None:
        self.client.close()

    def login(self, username: str, password: str) -> None:
        response = self.client.post(f"{API}/auth/login",
                                    json={"username": username, "password": password})
        if response.status_code != 200:
            raise fail(response, "login failed")
        self._take_tokens(response.json())

    def _take_tokens(self, body: dict[str, Any]) -> None:
        self.token = body["access_token"]
        self.refresh_token = body.get("refresh_token")

    def refresh(self) -> bool:
        if not self.refresh_token:
            return False
        response = self.client.post(f"{API}/auth/refresh",
                                    json={"refresh_token": self.refresh_token})
        if response.status_code != 200:
            return False
        self._take_tokens(response.json())
        return True

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, API + path, headers=self.headers(), **kwargs)
        if response.status_code == 401 and self.refresh():
            response = self.client.request(method, API + path, headers=self.headers(), **kwargs)
        return response

    def get_json(self, path: str, what: str, **params: Any) -> Any:
        response = self.request("GET", path, params=params or None)
        if response.status_code != 200:
            raise fail(response, what)
        return response.json()

    def pages(self, path: str, what: str, **params: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
            body = self.get_json(path, what, **query)
            yield from body.get("items") or []
            cursor = body.get("next_cursor")
            if not cursor:
                return


# --- starting a run --------------------------------------------------------------------------

def resolve_job(session: ApiSession, ref: str) -> dict[str, Any]:
    """A job by id, or by its exact name."""
    try:
        job_id = str(uuid.UUID(ref))
    except ValueError:
        job_id = None
    if job_id is not None:
        response = session.request("GET", f"/jobs/{job_id}")
        if response.status_code == 200:
            job: dict[str, Any] = response.json()
            return job
        if response.status_code != 404:
            raise fail(response, "cannot read the job")
    matches = [j for j in session.pages("/jobs", "cannot list jobs", q=ref) if j.get("name") == ref]
    if not matches:
        raise CliError(f"no job with the id or name {ref!r}", USAGE)
    if len(matches) > 1:
        ids = ", ".join(str(j["id"]) for j in matches)
        raise CliError(f"{len(matches)} jobs are named {ref!r}; give the id ({ids})", USAGE)
    return matches[0]


TRUE, FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def parameter_values(job: dict[str, Any], pairs: Iterable[str],
                     ask_secret: Callable[[str], str] | None = None) -> dict[str, Any]:
    """`k=v` pairs typed by the job's parameter definitions (int and bool are sent as such).
    Required secret parameters not given are asked for (never taken from argv unless given)."""
    specs = {p["name"]: p for p in job.get("parameters") or []}
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"--param {pair!r}: expected name=value", USAGE)
        values[name] = _typed(name, raw, (specs.get(name) or {}).get("type", "string"))
    for name, spec in specs.items():
        missing = name not in values and spec.get("default") is None
        if spec.get("type") == "secret" and spec.get("required") and missing and ask_secret:
            values[name] = ask_secret(name)
    return values


def _typed(name: str, raw: str, kind: str) -> Any:
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise CliError(f"--param {name}: {raw!r} is not a whole number", USAGE) from None
    if kind == "bool":
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise CliError(f"--param {name}: {raw!r} is not true or false", USAGE)
    return raw


def start_run(session: ApiSession, job_id: str, parameters: dict[str, Any],
              target_tags: list[str]) -> str:
    body: dict[str, Any] = {"parameters": parameters}
    if target_tags:
        body["targets"] = {"tags": target_tags}
    response = session.request("POST", f"/jobs/{job_id}/run", json=body)
    if response.status_code not in (200, 201, 202):
        raise fail(response, "the run was refused")
    return str(response.json()["execution_id"])


# --- the event stream ------------------------------------------------------------------------

@dataclass
class SseEvent:
    event: str
    id: str | None
    data: str


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from text lines (comments such as `: ping` are skipped)."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line == "":
            if "data" in fields or "event" in fields:
                ids = fields.get("id")
                yield SseEvent((fields.get("event") or ["message"])[-1], ids[-1] if ids else None,
                               "\n".join(fields.get("data", [])))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


class Display:
    """Output lines on `out` (stderr lines on `err`), the progress line on `err`."""

    def __init__(self, out: TextIO, err: TextIO, *, tty: bool, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.err, self.tty = out, err, tty
        self.interval_s = interval_s
        self.clock = clock
        self.status = ""
        self._shown = ""
        self._printed_at = -interval_s

    def line(self, text: str, *, to_err: bool = False) -> None:
        if self.tty and self._shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
        stream = self.err if to_err else self.out
        stream.write(text + "\n")
        stream.flush()
        if self.tty and self._shown:
            self._draw()

    def progress(self, status: str, *, force: bool = False) -> None:
        self.status = status
        if self.tty:
            self._draw()
        elif status != self._shown and (force or self.clock() - self._printed_at
                                        >= self.interval_s):
            self.err.write(status + "\n")
            self.err.flush()
            self._shown, self._printed_at = status, self.clock()

    def _draw(self) -> None:
        self.err.write("\r\x1b[K" + self.status)
        self.err.flush()
        self._shown = self.status

    def close(self) -> None:
        if self.tty and self._shown:
            self.err.write("\n")
            self.err.flush()


class TargetNames:
    """Target id -> name, from the execution's target list, else the target itself (cached)."""

    def __init__(self, session: ApiSession) -> None:
        self.session = session
        self.names: dict[str, str] = {}

    def load(self, execution_id: str) -> int:
        try:
            for item in self.session.pages(f"/executions/{execution_id}/targets",
                                           "cannot list the execution's targets"):
                if item.get("name"):
                    self.names[str(item["target_id"])] = str(item["name"])
                else:
                    self.names.setdefault(str(item["target_id"]), "")
        except (CliError, httpx.HTTPError):
            return 0
        return len(self.names)

    def __call__(self, target_id: str) -> str:
        name = self.names.get(target_id)
        if not name:
            name = target_id[:8]
            try:
                response = self.session.request("GET", f"/targets/{target_id}")
                if response.status_code == 200:
                    name = str(response.json().get("name") or name)
            except httpx.HTTPError:
                pass
            self.names[target_id] = name
        return name


class Follower:
    """Shows one execution's stream until it finishes; returns the final status."""

    def __init__(self, session: ApiSession, execution_id: str, display: Display, *,
                 retry_for_s: float = 120.0, read_timeout_s: float = 45.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.session = session
        self.execution_id = execution_id
        self.display = display
        self.names = TargetNames(session)
        self.retry_for_s = retry_for_s
        self.read_timeout_s = read_timeout_s
        self.sleep = sleep
        self.last_seq = 0
        self.total = 0
        self.done = 0
        self.failed = 0
        self.status: str | None = None
        self.partial: dict[tuple[str, str], str] = {}
        self.connections = 0

    def run(self) -> str:
        self.total = self.names.load(self.execution_id)
        delay, failing_since = 0.5, None
        while self.status is None:
            try:
                self._connect()
                delay, failing_since = 0.5, None
            except (httpx.TransportError, _Retry) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.retry_for_s:
                    raise CliError(f"lost the live stream ({_reason(exc)}); the execution "
                                   f"goes on: {self.execution_id}") from None
                if self.status is None:
                    self.sleep(delay)
                    delay = min(delay * 2, 5.0)
        self._flush()
        self.display.progress(self._progress(), force=True)
        self.display.close()
        return self.status

    def _connect(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_seq:
            headers["Last-Event-ID"] = str(self.last_seq)
        timeout = httpx.Timeout(10.0, read=self.read_timeout_s)
        path = f"{API}/executions/{self.execution_id}/events"
        self.connections += 1
        with self._stream(path, headers, timeout) as response:
            for event in parse_sse(response.iter_lines()):
                self._handle(event)
                if self.status is not None:
                    return
        raise _Retry("the stream ended early")

    @contextmanager
    def _stream(self, path: str, headers: dict[str, str],
                timeout: httpx.Timeout) -> Iterator[httpx.Response]:
        for attempt in range(2):
            with self.session.client.stream("GET", path, headers=self.session.headers(headers),
                                            timeout=timeout) as response:
                if response.status_code == 200:
                    yield response
                    return
                response.read()
                if response.status_code == 401 and attempt == 0 and self.session.refresh():
                    continue
                if response.status_code in (401, 403, 404):
                    raise fail(response, "cannot follow the execution")
                raise _Retry(f"HTTP {response.status_code}")

    def _handle(self, event: SseEvent) -> None:
        if event.event == "resync":
            return
        if event.id is not None and event.id.isdigit():
            seq = int(event.id)
            if seq <= self.last_seq:
                return  # already shown (the server resends nothing, but never show twice)
            self.last_seq = seq
        try:
            data = json.loads(event.data) if event.data else {}
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if event.event == "output":
            self._output(str(data.get("target_id", "")), str(data.get("stream", "stdout")),
                         str(data.get("data", "")))
        elif event.event == "started":
            self.total = int(data.get("total_targets") or self.total)
            self.display.progress(self._progress())
        elif event.event == "target_finished":
            self._target_finished(data)
        elif event.event == "finished":
            self.status = str(data.get("status") or "failed")
            counts = data.get("counts") or {}
            if counts.get("total"):
                self.total = int(counts["total"])

    def _output(self, target_id: str, stream: str, text: str) -> None:
        key = (target_id, stream)
        buffered = self.partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        for line in lines:
            self._show(target_id, stream, line)
        if rest:
            self.partial[key] = rest

    def _show(self, target_id: str, stream: str, line: str) -> None:
        name = self.names(target_id)
        if stream == "system":
            self.display.line(f"[{name}] * {line}", to_err=True)
        else:
            self.display.line(f"[{name}] {line}", to_err=stream == "stderr")

    def _flush(self, target_id: str | None = None) -> None:
        for key in [k for k in self.partial if target_id is None or k[0] == target_id]:
            self._show(key[0], key[1], self.partial.pop(key))

    def _target_finished(self, data: dict[str, Any]) -> None:
        target_id = str(data.get("target_id", ""))
        self._flush(target_id)
        status = str(data.get("status", ""))
        self.done += 1
        if status != "succeeded":
            self.failed += 1
        exit_code = data.get("exit_code")
        detail = f" (exit {exit_code})" if exit_code is not None else ""
        error = f": {data['error']}" if data.get("error") else ""
        # Results go with the progress (stderr): stdout carries only the targets' output.
        self.display.line(f"[{self.names(target_id)}] {status}{detail}{error}", to_err=True)
        self.display.progress(self._progress())

    def _progress(self) -> str:
        total = max(self.total, self.done)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[{self.done}/{total} done{failed}]"


class _Retry(Exception):
    pass


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
