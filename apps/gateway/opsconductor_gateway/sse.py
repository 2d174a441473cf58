"""`GET /api/v1/executions/{id}/events`: an execution's output and status changes as Server-Sent
Events, served by the gateway itself.

Every message's id is the execution's sequence number. A stream first replays the executor's
stored record after the resume point (Last-Event-ID), then sends live messages from the hub,
skipping what it already sent. A jump in the live sequence or a dropped backlog (slow reader)
sends `resync` and replays storage again; a quiet stream reads storage now and then to heal
lost best-effort output events. The stream ends after `finished`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from opsconductor_core.context import outgoing_headers
from opsconductor_core.problems import DomainError, InvalidInput, NotFound
from opsconductor_gateway.api import Gateway, returned_headers
from opsconductor_gateway.config import Settings
from opsconductor_gateway.exceptions import PathRejected
from opsconductor_gateway.live import (
    FINISHED,
    PING_FRAME,
    RESYNC_FRAME,
    LiveHub,
    StreamMessage,
    Subscriber,
    encode,
)
from opsconductor_gateway.routing import is_suspicious, raw_path_of
from opsconductor_runtime.interface import InvokeResponse

log = logging.getLogger("opsconductor.gateway.sse")

EXECUTOR = "executor"
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "timed_out", "interrupted"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# How soon storage is read again while a known sequence number is still missing from it, and
# after a failed read.
GAP_RETRY_S = 0.25
FAILED_READ_RETRY_S = 1.0


def canonical_id(value: str) -> str | None:
    try:
        return str(UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


class StorageUnavailable(Exception):
    pass


class ExecutionGone(Exception):
    """The executor no longer knows the execution (deleted): nothing more will come."""


@dataclass
class StoredPage:
    messages: list[StreamMessage]
    status: str | None
    next_after_seq: int | None


class ExecutionRecord:
    """The executor's stored, ordered record of an execution (its internal stream route)."""

    def __init__(self, gateway: Gateway, page_size: int) -> None:
        self._gateway = gateway
        self.page_size = page_size

    async def page(self, execution_id: str, after_seq: int) -> StoredPage:
        try:
            response = await self._gateway.invoke(
                EXECUTOR, "GET", f"/internal/executions/{execution_id}/stream",
                params=self._params(after_seq), headers=outgoing_headers())
        except DomainError as exc:
            raise StorageUnavailable(exc.detail) from None
        if response.status == 404:
            raise ExecutionGone(execution_id)
        if response.status != 200:
            raise StorageUnavailable(f"stored record answered {response.status}")
        return _stored_page(response)

    async def open(self, execution_id: str, after_seq: int,
                   caller_headers: dict[str, str]) -> StoredPage | InvokeResponse | None:
        """The first page, read with the caller's own request: the executor checks the caller's
        access as it reads. A refusal (or any other answer but 200) comes back to be passed on;
        a 200 that cannot be read is None (access was granted; the stream reads again)."""
        response = await self._gateway.invoke(
            EXECUTOR, "GET", f"/executions/{execution_id}/stream",
            params=self._params(after_seq), headers=caller_headers)
        if response.status != 200:
            return response
        try:
            return _stored_page(response)
        except StorageUnavailable as exc:
            log.warning("stored output unavailable", extra={
                "execution_id": execution_id, "error": str(exc)})
            return None

    def _params(self, after_seq: int) -> dict[str, str]:
        return {"after_seq": str(after_seq), "limit": str(self.page_size)}


def _stored_page(response: InvokeResponse) -> StoredPage:
    try:
        body = response.json()
        messages = [encode(_seq(item["seq"]), str(item["event"]), item.get("data"))
                    for item in body["items"]]
        next_after = body.get("next_after_seq")
        status = body.get("status")
        return StoredPage(messages, str(status) if status is not None else None,
                          _seq(next_after) if next_after else None)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageUnavailable(f"malformed stored record: {type(exc).__name__}") from None


def _seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("not a sequence number")
    return value


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    if event.is_set():
        return True
    if timeout_s <= 0:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


class LiveStream:
    """One SSE connection: what it has sent (`last`) and what it knows exists (`ahead`)."""

    def __init__(self, resume_after: int, hub: LiveHub, subscriber: Subscriber,
                 first_page: StoredPage | None, record: ExecutionRecord, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`subscriber` was subscribed before `first_page` was read (nothing published meanwhile
        is missed); without a first page, the stream reads storage first."""
        self.execution_id = subscriber.execution_id
        self.last = resume_after
        self.ahead = resume_after
        self.finished = False
        self._hub = hub
        self._subscriber = subscriber
        self._first_page = first_page
        self._record = record
        self._settings = settings
        self._clock = clock
        self._owed = False  # the last storage read failed
        self._idle_wait = settings.sse_idle_poll_s
        self._poll_at = 0.0
        self._hole_at = -1
        self._hole_since = 0.0

    async def run(self) -> AsyncIterator[bytes]:
        subscriber = self._subscriber
        try:
            async for chunk in self._catch_up():
                yield chunk
            last_write = self._clock()
            ping_s = self._settings.sse_ping_s
            while not self.finished:
                now = self._clock()
                woke = await _wait(subscriber.wake, min(self._poll_at, last_write + ping_s) - now)
                if woke:
                    async for chunk in self._take(subscriber):
                        last_write = self._clock()
                        yield chunk
                if not self.finished and self._clock() >= self._poll_at:
                    async for chunk in self._catch_up():
                        last_write = self._clock()
                        yield chunk
                if not self.finished and self._clock() - last_write >= ping_s:
                    last_write = self._clock()
                    yield PING_FRAME
        finally:
            self.close()

    def close(self) -> None:
        """Unsubscribe (twice is harmless)."""
        self._hub.unsubscribe(self._subscriber)

    async def _take(self, subscriber: Subscriber) -> AsyncIterator[bytes]:
        messages, overflowed = subscriber.take()
        if overflowed:
            yield RESYNC_FRAME
            async for chunk in self._catch_up():
                yield chunk
            return
        out: list[bytes] = []
        for message in messages:
            if self.finished:
                break
            if message.seq <= self.last:
                continue
            if message.seq == self.last + 1:
                out.append(message.frame)
                self.last = message.seq
                self.finished = message.event == FINISHED
                continue
            # A jump: something between was lost or is still on its way. Storage has it.
            in_sync = self.ahead <= self.last
            self.ahead = max(self.ahead, message.seq)
            if in_sync:
                if out:
                    yield b"".join(out)
                    out = []
                yield RESYNC_FRAME
                async for chunk in self._catch_up():
                    yield chunk
            # Otherwise a storage read for that gap is already scheduled (GAP_RETRY_S).
        if out:
            yield b"".join(out)
        if self.ahead <= self.last:
            self.ahead = self.last
            # Live traffic flows: storage is read again only after a quiet spell.
            self._idle_wait = self._settings.sse_idle_poll_s
            self._poll_at = self._clock() + self._idle_wait

    async def _catch_up(self) -> AsyncIterator[bytes]:
        after = self.last
        stuck = False
        while not self.finished:
            first, self._first_page = self._first_page, None
            try:
                page = first if first is not None else await self._record.page(
                    self.execution_id, after)
            except StorageUnavailable as exc:
                log.warning("stored output unavailable", extra={
                    "execution_id": self.execution_id, "error": str(exc)})
                self._owed = True
                break
            except ExecutionGone:
                self.finished = True
                break
            self._owed = False
            final = page.status in FINAL_STATUSES
            out: list[bytes] = []
            for message in page.messages:
                if message.seq <= self.last:
                    continue
                if message.seq > self.last + 1 and not final and not self._hole_expired():
                    self.ahead = max(self.ahead, message.seq)
                    stuck = True
                    break
                out.append(message.frame)
                self.last = message.seq
                if message.event == FINISHED:
                    self.finished = True
                    break
            if out:
                yield b"".join(out)
            if stuck or self.finished:
                break
            next_after = page.next_after_seq
            if (len(page.messages) < self._record.page_size or next_after is None
                    or next_after <= after):
                # A short page: storage held nothing more when it was read (reading again
                # would only confirm it). A final execution has nothing more to say.
                self.finished = final
                if self.ahead > self.last and self._hole_expired():
                    self.ahead = self.last  # a seq announced live never reached storage
                break
            after = next_after
        self.ahead = max(self.ahead, self.last)
        self._schedule_read()

    def _hole_expired(self) -> bool:
        """A missing seq is waited for (its transaction may still be committing), not forever."""
        now = self._clock()
        if self._hole_at != self.last:
            self._hole_at, self._hole_since = self.last, now
        return now - self._hole_since >= self._settings.sse_hole_grace_s

    def _schedule_read(self) -> None:
        if self.ahead > self.last:
            delay = GAP_RETRY_S
        elif self._owed:
            delay = FAILED_READ_RETRY_S
        else:
            delay = self._idle_wait
            self._idle_wait = min(self._idle_wait * 2, self._settings.sse_idle_poll_max_s)
        self._poll_at = self._clock() + delay


class ExecutionEvents:
    """The SSE endpoint: authenticate, check read access with the executor, then stream."""

    def __init__(self, gateway: Gateway, hub: LiveHub, settings: Settings) -> None:
        self._gateway = gateway
        self._hub = hub
        self._settings = settings
        self._record = ExecutionRecord(gateway, settings.sse_page_size)

    async def stream(self, request: Request) -> Response:
        if is_suspicious(raw_path_of(request.scope)):
            raise PathRejected("The path contains forbidden sequences")
        await self._gateway.authenticate(request)
        execution_id = canonical_id(request.path_params["execution_id"])
        if execution_id is None:
            raise NotFound("No such execution")
        resume_after = _resume_point(request)
        # The executor decides who may read this execution: the caller's own request, forwarded.
        headers = self._gateway.forwarded_headers(request.scope)
        headers.pop("Last-Event-ID", None)
        headers["Accept"] = "application/json"
        # Subscribed first: nothing published while the first page is read is missed.
        subscriber = self._hub.subscribe(execution_id)
        try:
            opened = await self._record.open(execution_id, resume_after, headers)
        except BaseException:
            self._hub.unsubscribe(subscriber)
            raise
        if isinstance(opened, InvokeResponse):
            self._hub.unsubscribe(subscriber)
            return _answer(opened)
        if request.method == "HEAD":
            self._hub.unsubscribe(subscriber)
            return Response(media_type="text/event-stream", headers=SSE_HEADERS)
        stream = LiveStream(resume_after, self._hub, subscriber, opened, self._record,
                            self._settings)
        # The stream unsubscribes when it ends; the background task covers a response whose
        # body never started (the client went away first).
        return StreamingResponse(stream.run(), media_type="text/event-stream",
                                 headers=SSE_HEADERS, background=BackgroundTask(stream.close))


def _answer(upstream: InvokeResponse) -> Response:
    return Response(upstream.body, status_code=upstream.status, headers=returned_headers(upstream))


def _resume_point(request: Request) -> int:
    """Last-Event-ID (what a browser sends on reconnect) or ?last_event_id=; 0 = from the start."""
    raw = request.headers.get("last-event-id")
    field = "Last-Event-ID"
    if raw is None:
        raw, field = request.query_params.get("last_event_id"), "last_event_id"
    if raw is None or raw.strip() == "":
        return 0
    text = raw.strip()
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput("The resume point is not an event id of this stream",
                           errors={field: "must be a non-negative integer"})
    return int(text)
