"""The live-output hub: execution messages from pub/sub fanned out to this replica's SSE streams.

Publishing never waits for a reader. Each connection has a bounded backlog; when a reader falls
that far behind, its backlog is dropped and it is marked for resync (it then catches up from the
executor's stored record, which holds everything the live events carry).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

# SSE event names. `resync` carries no id: it only says "catching up from storage now".
OUTPUT = "output"
FINISHED = "finished"
RESYNC_FRAME = b"event: resync\ndata: {}\n\n"
PING_FRAME = b": ping\n\n"


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One SSE message, encoded once however many connections send it."""

    seq: int
    event: str
    frame: bytes


def encode(seq: int, event: str, data: Any) -> StreamMessage:
    # Compact JSON never contains a raw newline, so one `data:` line carries the whole payload.
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return StreamMessage(seq, event, f"id: {seq}\nevent: {event}\ndata: {body}\n\n".encode())


class Subscriber:
    """One SSE connection's backlog of live messages."""

    __slots__ = ("_limit", "execution_id", "overflowed", "pending", "wake")

    def __init__(self, execution_id: str, limit: int) -> None:
        self.execution_id = execution_id
        self._limit = limit
        self.pending: list[StreamMessage] = []
        self.overflowed = False
        self.wake = asyncio.Event()

    def offer(self, messages: list[StreamMessage]) -> None:
        if not self.overflowed:
            if len(self.pending) + len(messages) > self._limit:
                # The reader is too slow: storage serves it instead of memory.
                self.pending = []
                self.overflowed = True
            else:
                self.pending.extend(messages)
        self.wake.set()

    def take(self) -> tuple[list[StreamMessage], bool]:
        """The waiting messages, and whether some were dropped since the last take."""
        messages, overflowed = self.pending, self.overflowed
        self.pending = []
        self.overflowed = False
        self.wake.clear()
        return messages, overflowed


class LiveHub:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscriber]] = {}

    def subscribe(self, execution_id: str) -> Subscriber:
        subscriber = Subscriber(execution_id, self._queue_size)
        self._subscribers.setdefault(execution_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        current = self._subscribers.get(subscriber.execution_id)
        if current is None:
            return
        current.discard(subscriber)
        if not current:
            del self._subscribers[subscriber.execution_id]

    def publish(self, execution_id: str, messages: list[StreamMessage]) -> int:
        """Hands the messages to every stream of that execution; returns how many streams."""
        subscribers = self._subscribers.get(execution_id)
        if not subscribers or not messages:
            return 0
        for subscriber in subscribers:
            subscriber.offer(messages)
        return len(subscribers)

    def watching(self, execution_id: str) -> bool:
        return execution_id in self._subscribers

    @property
    def connections(self) -> int:
        return sum(len(s) for s in self._subscribers.values())


class MalformedEvent(ValueError):
    pass


def _seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MalformedEvent("seq must be a positive integer")
    return value


def _execution_id(data: Any) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("execution_id"), str):
        raise MalformedEvent("execution_id missing")
    return str(data["execution_id"])


CHUNK_FIELDS = ("target_id", "stream", "data", "ts")


def output_messages(data: Any) -> tuple[str, list[StreamMessage]]:
    """execution.output: one SSE message per chunk, with the fields the stored record has."""
    execution_id = _execution_id(data)
    chunks = data.get("chunks")
    if not isinstance(chunks, list):
        raise MalformedEvent("chunks missing")
    messages = []
    for chunk in chunks:
        if not isinstance(chunk, dict):
            raise MalformedEvent("chunk is not an object")
        messages.append(encode(_seq(chunk.get("seq")), OUTPUT,
                               {k: chunk.get(k) for k in CHUNK_FIELDS}))
    return execution_id, messages


def status_messages(event: str) -> Any:
    """started / target_finished / finished: the payload as the executor also stores it."""

    def translate(data: Any) -> tuple[str, list[StreamMessage]]:
        execution_id = _execution_id(data)
        return execution_id, [encode(_seq(data.get("seq")), event, data)]

    return translate
