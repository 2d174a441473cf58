"""Live output (SSE): the gateway's own stream, fed by pub/sub and healed from storage.

httpx's ASGI transport buffers a whole response, so streams are read from the gateway served by
a real uvicorn on a loopback port; events are delivered in-process, as the embedded host does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from opsconductor_contracts import topics
from opsconductor_contracts.envelope import new_event
from opsconductor_contracts.events import (
    ExecutionFinished,
    ExecutionOutput,
    ExecutionStarted,
    ExecutionTargetFinished,
    OutputChunkEvent,
)
from opsconductor_gateway.config import Settings
from opsconductor_gateway.main import create_app
from opsconductor_testing.runtime import RecordingRuntime

TARGET = "7d4c4a8e-5b1a-4d59-9a53-000000000001"
ROUTES = {
    topics.EXECUTION_OUTPUT: "/events/execution-output",
    topics.EXECUTION_STARTED: "/events/execution-started",
    topics.EXECUTION_TARGET_FINISHED: "/events/execution-target-finished",
    topics.EXECUTION_FINISHED: "/events/execution-finished",
}


def problem(status: int, title: str) -> Response:
    return JSONResponse({"type": "about:blank", "title": title, "status": status,
                         "detail": title}, status_code=status,
                        media_type="application/problem+json")


class FakeExecutor:
    """The executor's stored, ordered record of each execution: read by a caller with its own
    token (access checked) or by the gateway alone (internal)."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.status: dict[str, str] = {}
        self.forbidden: set[str] = set()
        self.access_headers: list[dict[str, str]] = []
        self.reads: list[int] = []
        self.internal_reads: list[int] = []
        self.down = False
        self.unreadable_for_callers = False
        app = FastAPI()
        self.app = app

        @app.get("/executions/{execution_id}/stream")
        async def read_as_caller(execution_id: str, request: Request, after_seq: int = 0,
                                 limit: int = 500) -> Response:
            self.access_headers.append(dict(request.headers))
            if not request.headers.get("authorization", "").startswith("Bearer "):
                return problem(401, "Unauthorized")
            if execution_id in self.forbidden:
                return problem(403, "Forbidden")
            if self.unreadable_for_callers:
                return JSONResponse({"items": "not a list"})
            return self.page(execution_id, after_seq, limit)

        @app.get("/internal/executions/{execution_id}/stream")
        async def read_internal(execution_id: str, after_seq: int = 0,
                                limit: int = 500) -> Response:
            self.internal_reads.append(after_seq)
            return self.page(execution_id, after_seq, limit)

    def page(self, execution_id: str, after_seq: int, limit: int) -> Response:
        self.reads.append(after_seq)
        if self.down:
            return problem(503, "Service unavailable")
        if execution_id not in self.records:
            return problem(404, "Not found")
        ordered = sorted(self.records[execution_id], key=lambda item: item["seq"])
        items = [item for item in ordered if item["seq"] > after_seq][:limit]
        return JSONResponse({"items": items, "status": self.status[execution_id],
                             "next_after_seq": items[-1]["seq"] if items else after_seq})

    def create(self, status: str = "running") -> str:
        execution_id = str(uuid.uuid4())
        self.records[execution_id] = []
        self.status[execution_id] = status
        return execution_id

    def store(self, execution_id: str, seq: int, event: str, data: dict[str, Any]) -> None:
        self.records[execution_id].append({"seq": seq, "event": event, "data": data})


def chunk(seq: int, text: str) -> OutputChunkEvent:
    return OutputChunkEvent(seq=seq, target_id=TARGET, stream="stdout", data=text,
                            ts=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))


class Execution:
    """Drives one execution the way the executor does: store first, then (maybe) publish."""

    def __init__(self, executor: FakeExecutor, deliver: Callable[..., Any]) -> None:
        self.executor = executor
        self.deliver = deliver
        self.id = executor.create()
        self.seq = 0
        self.hub: Any = None

    async def output(self, *texts: str, publish: bool = True, store: bool = True) -> list[int]:
        chunks = []
        for text in texts:
            self.seq += 1
            chunks.append(chunk(self.seq, text))
        if store:
            for c in chunks:
                self.executor.store(self.id, c.seq, "output",
                                    c.model_dump(mode="json", exclude={"seq"}))
        if publish:
            await self.deliver(topics.EXECUTION_OUTPUT,
                               ExecutionOutput(execution_id=self.id, chunks=chunks))
        return [c.seq for c in chunks]

    async def started(self, total: int = 1) -> int:
        self.seq += 1
        payload = ExecutionStarted(execution_id=self.id, job_id="job-1", seq=self.seq,
                                   total_targets=total)
        self.executor.store(self.id, self.seq, "started", payload.model_dump(mode="json"))
        await self.deliver(topics.EXECUTION_STARTED, payload)
        return self.seq

    async def target_finished(self, status: str = "succeeded") -> int:
        self.seq += 1
        payload = ExecutionTargetFinished(execution_id=self.id, seq=self.seq, target_id=TARGET,
                                          status=status, exit_code=0)
        self.executor.store(self.id, self.seq, "target_finished",
                            payload.model_dump(mode="json"))
        await self.deliver(topics.EXECUTION_TARGET_FINISHED, payload)
        return self.seq

    async def finished(self, status: str = "succeeded", publish: bool = True) -> int:
        self.seq += 1
        payload = ExecutionFinished(execution_id=self.id, job_id="job-1", seq=self.seq,
                                    status=status, counts={"total": 1, "succeeded": 1})
        self.executor.store(self.id, self.seq, "finished",
                            payload.model_dump(mode="json"))
        self.executor.status[self.id] = status
        if publish:
            await self.deliver(topics.EXECUTION_FINISHED, payload)
        return self.seq


class SseEvent:
    def __init__(self, event: str, id: str | None, data: str) -> None:
        self.event, self.id, self.data = event, id, data

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id)

    def json(self) -> Any:
        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"SseEvent({self.event}, {self.id})"


class SseReader:
    """Parses an open text/event-stream response in a task (a timed-out wait leaves the stream
    intact); comments are kept to observe pings."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self._events: asyncio.Queue[SseEvent | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._parse())

    async def _parse(self) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if fields:
                        self._events.put_nowait(SseEvent(
                            fields.get("event", "message"), fields.get("id"),
                            fields.get("data", "")))
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line)
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, httpx.StreamError):
            pass  # the test closed the response: the stream is over for this reader
        finally:
            self._events.put_nowait(None)

    async def next(self, timeout_s: float = 5.0) -> SseEvent | None:
        """The next event, or None when the server ended the stream."""
        async with asyncio.timeout(timeout_s):
            return await self._events.get()

    async def take(self, count: int, timeout_s: float = 5.0) -> list[SseEvent]:
        events = []
        for _ in range(count):
            event = await self.next(timeout_s)
            assert event is not None, f"stream ended after {events}"
            events.append(event)
        return events

    async def until_end(self, timeout_s: float = 10.0) -> list[SseEvent]:
        events = []
        while (event := await self.next(timeout_s)) is not None:
            events.append(event)
        return events


def seqs(events: list[SseEvent]) -> list[int]:
    return [e.seq for e in events if e.event != "resync"]


@pytest.fixture
def executor(runtime: RecordingRuntime) -> FakeExecutor:
    fake = FakeExecutor()
    runtime.mount("executor", fake.app)
    return fake


@pytest.fixture
async def gateway(runtime: RecordingRuntime, executor: FakeExecutor,
                  make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Starts the gateway on a loopback port; returns (base_url, app)."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> tuple[str, FastAPI]:
        app = create_app(runtime, make_settings(**overrides))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        servers.append((server, task))
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{port}", app

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def live(gateway: Callable[..., Any], executor: FakeExecutor,
               in_process: Callable[[FastAPI], httpx.AsyncClient],
               auth: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """(base_url, new execution, open stream) against a served gateway."""
    clients: list[httpx.AsyncClient] = []

    async def setup(**overrides: Any) -> tuple[Execution, Callable[..., Any], list[int]]:
        base_url, app = await gateway(**overrides)
        runtime_client = in_process(app)
        http = httpx.AsyncClient(base_url=base_url, timeout=10.0)
        clients.extend([runtime_client, http])
        statuses: list[int] = []

        async def deliver(topic: str, payload: Any) -> None:
            event = new_event(topic, payload, source="executor", actor=None,
                              resource_type="execution", resource_id=payload.execution_id)
            response = await runtime_client.post(
                ROUTES[topic], content=json.dumps(event),
                headers={"content-type": "application/cloudevents+json"})
            statuses.append(response.status_code)
            assert response.json() == {"status": "SUCCESS"}

        execution = Execution(executor, deliver)
        execution.hub = app.state.live_hub

        def open_stream(execution_id: str | None = None, headers: dict[str, str] | None = None,
                        params: dict[str, str] | None = None, method: str = "GET") -> Any:
            path = f"/api/v1/executions/{execution_id or execution.id}/events"
            return http.stream(method, path, headers={**auth, **(headers or {})}, params=params)

        return execution, open_stream, statuses

    yield setup
    for client in clients:
        await client.aclose()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def subscribed(hub: Any, execution_id: str, count: int = 1) -> None:
    await wait_for(lambda: hub.connections >= count and hub.watching(execution_id))


class TestAccess:
    async def test_401_without_a_token(self, client, executor):
        execution_id = executor.create()
        response = await client.get(f"/api/v1/executions/{execution_id}/events")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert executor.access_headers == []

    async def test_404_for_an_unknown_execution(self, client, executor, auth):
        response = await client.get(f"/api/v1/executions/{uuid.uuid4()}/events", headers=auth)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 404

    async def test_404_for_an_id_that_is_no_uuid(self, client, executor, auth):
        response = await client.get("/api/v1/executions/not-an-id/events", headers=auth)
        assert response.status_code == 404
        assert executor.access_headers == []

    async def test_403_from_the_executor_reaches_the_client(self, client, executor, auth):
        execution_id = executor.create()
        executor.forbidden.add(execution_id)
        response = await client.get(f"/api/v1/executions/{execution_id}/events", headers=auth)
        assert response.status_code == 403
        assert response.json()["title"] == "Forbidden"

    async def test_the_callers_own_token_is_checked_by_the_executor(self, client, executor,
                                                                    auth):
        execution_id = executor.create()
        executor.forbidden.add(execution_id)  # ends the request early (no stream)
        await client.get(f"/api/v1/executions/{execution_id}/events", headers=auth)
        sent = executor.access_headers[0]
        assert sent["authorization"] == auth["Authorization"]
        assert sent["x-forwarded-for"] == "203.0.113.7"

    async def test_the_first_read_is_the_access_check(self, live, executor):
        """One call before the first bytes: the caller's own read of the stored record."""
        execution, open_stream, _ = await live()
        await execution.output("stored line\n", publish=False)
        async with open_stream() as response:
            assert response.status_code == 200
            events = await SseReader(response).take(1, timeout_s=3)
        assert [e.event for e in events] == ["output"]
        assert executor.reads == [0] and executor.internal_reads == []
        assert len(executor.access_headers) == 1

    async def test_an_unreadable_first_page_is_read_again(self, live, executor):
        """Access was granted (200); only the page is lost, so the stream reads storage itself."""
        execution, open_stream, _ = await live()
        await execution.output("stored line\n", publish=False)
        executor.unreadable_for_callers = True
        async with open_stream() as response:
            assert response.status_code == 200
            events = await SseReader(response).take(1, timeout_s=3)
        assert [e.event for e in events] == ["output"]
        assert executor.internal_reads == [0]

    async def test_later_reads_do_not_need_the_callers_token(self, live, executor):
        """A token that expires during a long stream does not cut storage reads off."""
        execution, open_stream, _ = await live(sse_page_size=1)
        await execution.output("a", "b", publish=False)
        await execution.finished(publish=False)
        async with open_stream() as response:
            assert seqs(await SseReader(response).until_end()) == [1, 2, 3]
        assert executor.reads == [0, 1, 2] and executor.internal_reads == [1, 2]
        assert len(executor.access_headers) == 1

    async def test_a_refused_stream_leaves_nothing_behind(self, live, executor):
        execution, open_stream, _ = await live()
        executor.forbidden.add(execution.id)
        async with open_stream() as response:
            assert response.status_code == 403
        assert execution.hub.connections == 0 and not execution.hub.watching(execution.id)

    async def test_head_answers_like_the_stream_would_and_subscribes_nothing(
            self, live, executor):
        execution, open_stream, _ = await live()
        async with open_stream(method="HEAD") as allowed:
            assert allowed.status_code == 200
            assert allowed.headers["content-type"].startswith("text/event-stream")
        executor.forbidden.add(execution.id)
        async with open_stream(method="HEAD") as refused:
            assert refused.status_code == 403
        assert execution.hub.connections == 0 and not execution.hub.watching(execution.id)
        assert len(executor.access_headers) == 2

    async def test_422_for_a_resume_point_that_is_no_event_id(self, client, executor, auth):
        execution_id = executor.create()
        response = await client.get(f"/api/v1/executions/{execution_id}/events",
                                    headers={**auth, "Last-Event-ID": "abc"})
        assert response.status_code == 422
        assert "Last-Event-ID" in response.json()["errors"]


class TestStream:
    async def test_stored_then_live_then_ends_after_finished(self, live):
        execution, open_stream, _ = await live()
        await execution.started()
        await execution.output("stored line\n", publish=False)
        async with open_stream() as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            reader = SseReader(response)
            first = await reader.take(2)
            await execution.output("live line\n")
            await execution.target_finished()
            await execution.finished()
            rest = await reader.until_end()
        events = first + rest
        assert [(e.seq, e.event) for e in events] == [
            (1, "started"), (2, "output"), (3, "output"), (4, "target_finished"),
            (5, "finished")]
        assert events[0].json() == {"execution_id": execution.id, "job_id": "job-1", "seq": 1,
                                    "total_targets": 1}
        assert events[1].json() == {"target_id": TARGET, "stream": "stdout",
                                    "data": "stored line\n", "ts": "2025-01-02T03:04:05Z"}
        assert events[2].json()["data"] == "live line\n"
        assert events[4].json()["status"] == "succeeded"

    async def test_the_wire_format_is_one_message_per_chunk(self, live):
        execution, open_stream, _ = await live()
        await execution.output("a", "b\nc", publish=False)
        await execution.finished(publish=False)
        async with open_stream() as response:
            body = (await response.aread()).decode()
        messages = body.split("\n\n")
        assert messages[0] == ('id: 1\nevent: output\ndata: {"target_id":"' + TARGET +
                               '","stream":"stdout","data":"a","ts":"2025-01-02T03:04:05Z"}')
        assert messages[1].startswith('id: 2\nevent: output\ndata: {"target_id"')
        assert '"data":"b\\nc"' in messages[1]
        assert messages[2].startswith("id: 3\nevent: finished\ndata: ")
        assert messages[3:] == [""]

    async def test_resume_with_last_event_id_has_no_gap_and_no_duplicate(self, live):
        execution, open_stream, _ = await live()
        await execution.started(total=1)
        await execution.output("one\n", "two\n")
        async with open_stream() as response:
            reader = SseReader(response)
            seen = await reader.take(3)
            await execution.output("three\n")
            seen += await reader.take(1)
        # Gone: these are stored and published with nobody listening.
        await execution.output("four\n", "five\n")
        await execution.output("six\n")
        async with open_stream(headers={"Last-Event-ID": str(seen[-1].seq)}) as response:
            reader = SseReader(response)
            seen += await reader.take(3)
            await execution.output("seven\n")
            await execution.finished()
            seen += await reader.until_end()
        assert seqs(seen) == list(range(1, 10))
        assert [e.json()["data"] for e in seen if e.event == "output"] == [
            "one\n", "two\n", "three\n", "four\n", "five\n", "six\n", "seven\n"]

    async def test_resume_point_from_the_query(self, live):
        execution, open_stream, _ = await live()
        await execution.output("a", "b", "c", publish=False)
        await execution.finished(publish=False)
        async with open_stream(params={"last_event_id": "2"}) as response:
            events = await SseReader(response).until_end()
        assert seqs(events) == [3, 4]

    async def test_a_gap_in_live_events_resyncs_from_storage(self, live):
        execution, open_stream, _ = await live()
        async with open_stream() as response:
            reader = SseReader(response)
            await subscribed(execution.hub, execution.id)
            await execution.output("1", "2")
            first = await reader.take(2)
            await execution.output("3", "4", publish=False)  # those live events were lost
            await execution.output("5")
            rest = await reader.take(4)
            await execution.finished()
            rest += await reader.until_end()
        assert [e.event for e in rest] == ["resync", "output", "output", "output", "finished"]
        assert rest[0].id is None
        assert seqs(first + rest) == [1, 2, 3, 4, 5, 6]

    async def test_lost_output_is_healed_when_the_stream_is_quiet(self, live):
        execution, open_stream, _ = await live(sse_idle_poll_s=0.2)
        async with open_stream() as response:
            reader = SseReader(response)
            await subscribed(execution.hub, execution.id)
            await execution.output("lost 1", "lost 2", publish=False)
            events = await reader.take(2, timeout_s=3)
        assert seqs(events) == [1, 2]
        assert all(e.event == "output" for e in events)

    async def test_a_seq_missing_from_storage_is_waited_for(self, live):
        execution, open_stream, _ = await live(sse_hole_grace_s=5)
        await execution.output("1", publish=False)
        await execution.output("2", store=False, publish=False)  # still committing
        await execution.output("3", publish=False)
        async with open_stream() as response:
            reader = SseReader(response)
            assert seqs(await reader.take(1)) == [1]
            with pytest.raises(TimeoutError):
                await reader.next(timeout_s=0.6)
            execution.executor.store(execution.id, 2, "output",
                                     chunk(2, "2").model_dump(mode="json", exclude={"seq"}))
            events = await reader.take(2, timeout_s=3)
        assert seqs(events) == [2, 3]

    async def test_a_seq_that_never_commits_is_skipped_after_a_grace(self, live):
        execution, open_stream, _ = await live(sse_hole_grace_s=0.3)
        await execution.output("1", publish=False)
        await execution.output("2", store=False, publish=False)
        await execution.output("3", publish=False)
        async with open_stream() as response:
            events = await SseReader(response).take(2, timeout_s=3)
        assert seqs(events) == [1, 3]

    async def test_a_slow_client_does_not_block_publishing_and_later_gets_everything(
            self, live):
        execution, open_stream, statuses = await live(sse_queue_size=20)
        big = "x" * 65536
        async with open_stream() as response:
            await subscribed(execution.hub, execution.id)
            # ~20 MB while the client reads nothing: far more than socket buffers hold, so the
            # server-side stream blocks and its backlog overflows.
            started = time.monotonic()
            for _ in range(30):
                await execution.output(*([big] * 10))
            await execution.finished()
            publishing_s = time.monotonic() - started
            reader = SseReader(response)
            events = await reader.until_end(timeout_s=30)
        assert statuses and set(statuses) == {200}
        assert publishing_s < 10
        assert "resync" in [e.event for e in events]
        assert seqs(events) == list(range(1, 302))
        assert events[-1].event == "finished"

    async def test_storage_is_read_page_by_page(self, live, executor):
        execution, open_stream, _ = await live(sse_page_size=2)
        await execution.output("a", "b", "c", "d", "e", publish=False)
        await execution.finished(publish=False)
        async with open_stream() as response:
            events = await SseReader(response).until_end()
        assert seqs(events) == [1, 2, 3, 4, 5, 6]
        assert executor.reads == [0, 2, 4]

    async def test_a_short_page_is_all_storage_had(self, live, executor):
        """One read serves a stream whose stored record fits a page; live events do the rest."""
        execution, open_stream, _ = await live()
        await execution.started()
        await execution.output("stored line\n", publish=False)
        async with open_stream() as response:
            reader = SseReader(response)
            assert seqs(await reader.take(2)) == [1, 2]
            await execution.output("live line\n")
            await execution.target_finished()
            await execution.finished()
            assert seqs(await reader.until_end()) == [3, 4, 5]
        assert executor.reads == [0]

    async def test_storage_briefly_unavailable_loses_nothing(self, live, executor):
        execution, open_stream, _ = await live(sse_idle_poll_s=0.2)
        async with open_stream() as response:
            reader = SseReader(response)
            await subscribed(execution.hub, execution.id)
            executor.down = True
            await execution.output("1", publish=False)
            await execution.output("2")  # a gap, but storage cannot be read yet
            events = await reader.take(1)
            with pytest.raises(TimeoutError):
                await reader.next(timeout_s=0.5)
            executor.down = False
            events += await reader.take(2, timeout_s=5)
        assert [e.event for e in events] == ["resync", "output", "output"]
        assert seqs(events) == [1, 2]

    async def test_a_deleted_execution_ends_the_stream(self, live, executor):
        execution, open_stream, _ = await live(sse_idle_poll_s=0.2)
        await execution.output("1", publish=False)
        async with open_stream() as response:
            reader = SseReader(response)
            assert seqs(await reader.take(1)) == [1]
            del executor.records[execution.id]
            assert await reader.next(timeout_s=5) is None

    async def test_pings_keep_a_quiet_stream_open(self, live):
        _, open_stream, _ = await live(sse_ping_s=0.2)
        async with open_stream() as response:
            reader = SseReader(response)
            with pytest.raises(TimeoutError):
                await reader.next(timeout_s=0.7)
        assert ": ping" in reader.comments

    async def test_a_finished_execution_resumed_at_its_end_closes_at_once(self, live):
        execution, open_stream, _ = await live()
        await execution.output("a", publish=False)
        last = await execution.finished(publish=False)
        async with open_stream(headers={"Last-Event-ID": str(last)}) as response:
            events = await SseReader(response).until_end(timeout_s=3)
        assert events == []

    async def test_the_hub_forgets_a_closed_stream(self, live):
        execution, open_stream, _ = await live()
        hub = execution.hub
        async with open_stream() as response:
            assert response.status_code == 200
            await subscribed(hub, execution.id)
        await wait_for(lambda: not hub.watching(execution.id))

