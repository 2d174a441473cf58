"""Live output of an execution: secrets masked, capped per target, batched for the hooks.

Every chunk a command prints goes through `OutputCollector.write`: secret parameter values are
replaced by `****` (also when a value arrives split over two chunks of the same stream), a
target's output stops at its byte cap with one "system" chunk saying so, and chunks from all
targets are delivered to `hooks.output` in batches (every `flush_interval_s`, or sooner once
`flush_bytes` wait). The buffer between the commands and the hooks is bounded: past
`buffer_bytes` a writer waits, so the connector stops reading that channel (SSH flow control)
instead of this process filling its memory while the hooks are slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

log = logging.getLogger(__name__)

MASK = "****"
StreamName = Literal["stdout", "stderr", "system"]
_MIN_LINE_SECRET = 4  # lines of a multi-line secret shorter than this would mask ordinary text


@dataclass
class EngineChunk:
    """One piece of a target's output; no seq yet (the service assigns it when storing)."""

    target_id: str
    stream: StreamName
    data: str
    ts: datetime


def _now() -> datetime:
    return datetime.now(UTC)


class SecretMasker:
    """Replaces secret values with `****`; tells how much of a text's end may begin a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        pieces: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            pieces.add(secret)
            # A multi-line secret (a key) is often printed line by line.
            pieces.update(line for line in secret.splitlines() if len(line.strip()) >= _MIN_LINE_SECRET)
        # Longest first: at one position the alternation takes the first that matches.
        self.secrets = sorted(pieces, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def unsafe_tail(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of a secret (0 when none)."""
        longest = 0
        for secret in self.secrets:
            first = secret[0]
            # Candidate starts: where the secret's first character occurs in the last len-1 chars.
            lower = max(len(text) - len(secret) + 1, 0)
            position = text.find(first, lower)
            while position != -1:
                tail = len(text) - position
                if tail <= longest:
                    break
                if secret.startswith(text[position:]):
                    longest = tail
                    break
                position = text.find(first, position + 1)
        return longest


@dataclass
class _Target:
    used_bytes: int = 0
    truncated: bool = False
    held: dict[str, str] = field(default_factory=dict)  # per stream: text that may start a secret


class OutputCollector:
    """Between the running commands of one execution and `hooks.output` (see module doc)."""

    def __init__(
        self,
        deliver: Callable[[list[EngineChunk]], Awaitable[None]],
        *,
        secrets: Iterable[str] = (),
        cap_bytes: int = 1024 * 1024,
        flush_interval_s: float = 0.05,
        flush_bytes: int = 64 * 1024,
        buffer_bytes: int = 1024 * 1024,
    ) -> None:
        self._deliver = deliver
        self.masker = SecretMasker(secrets)
        self.cap_bytes = cap_bytes
        self.flush_interval_s = flush_interval_s
        self.flush_bytes = flush_bytes
        self.buffer_bytes = max(buffer_bytes, flush_bytes)
        self._targets: dict[str, _Target] = {}
        self._heard: set[str] = set()  # targets whose first chunk was queued
        self._pending: list[EngineChunk] = []
        self._pending_bytes = 0
        self._written = 0  # chunks queued so far
        self._delivered = 0  # chunks handed to `deliver` (and returned) so far
        self._wake = asyncio.Event()  # something is pending
        self._urgent = asyncio.Event()  # flush now: size reached, a drain, or closing
        self._progress = asyncio.Condition()  # a batch was delivered
        self._closing = False
        self._delivering = False
        self._flusher: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="opsc-output-flusher")

    async def close(self) -> None:
        """Deliver everything still held or pending, then stop."""
        for target_id, state in self._targets.items():
            for stream in list(state.held):
                self._release_held(target_id, state, stream)
        self._closing = True
        flusher = self._flusher
        if flusher is not None and not flusher.done() and not self._delivering:
            # Idle: flush here rather than wait for it to wake (a busy loop makes that slow).
            flusher.cancel()
        elif flusher is not None and not flusher.done():
            self._urgent.set()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        while self._pending:
            await self._flush_once()

    # --- writers --------------------------------------------------------------------------------

    def truncated(self, target_id: str) -> bool:
        state = self._targets.get(target_id)
        return bool(state and state.truncated)

    async def write(self, target_id: str, stream: Literal["stdout", "stderr"], data: str) -> None:
        """Queue command output: masked, capped, held back while its end may start a secret."""
        state = self._targets.setdefault(target_id, _Target())
        if state.truncated or not data:
            return
        if self.masker:
            text = self.masker.mask(state.held.pop(stream, "") + data)
            keep = self.masker.unsafe_tail(text)
            if keep:
                text, state.held[stream] = text[:-keep], text[-keep:]
        else:
            text = data
        if text:
            self._capped(target_id, state, stream, text)
        await self._room()

    def end_stream(self, target_id: str) -> None:
        """A command ended: what was held back (it is no secret now) goes out."""
        state = self._targets.get(target_id)
        if state is not None:
            for stream in list(state.held):
                self._release_held(target_id, state, stream)

    def system(self, target_id: str, message: str) -> None:
        """A line from the engine itself (outside the cap: an operator must see it)."""
        self._enqueue(EngineChunk(target_id, "system", self.masker.mask(message), _now()))

    async def drain(self) -> None:
        """Return once every chunk queued before this call has been delivered."""
        goal = self._written
        if self._delivered >= goal:
            return
        self._urgent.set()
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._delivered >= goal or self._flusher_gone())

    # --- internals ------------------------------------------------------------------------------

    def _flusher_gone(self) -> bool:
        return self._flusher is not None and self._flusher.done()

    def _release_held(self, target_id: str, state: _Target, stream: str) -> None:
        text = state.held.pop(stream, "")
        if text and not state.truncated:
            self._capped(target_id, state, stream, text)  # type: ignore[arg-type]

    def _capped(self, target_id: str, state: _Target, stream: StreamName, text: str) -> None:
        size = len(text.encode("utf-8", "replace"))
        room = self.cap_bytes - state.used_bytes
        if size > room:
            # Cut at a character boundary, then say once that the rest is gone.
            kept = text.encode("utf-8", "replace")[: max(room, 0)].decode("utf-8", "ignore")
            if kept:
                self._enqueue(EngineChunk(target_id, stream, kept, _now()))
            state.used_bytes = self.cap_bytes
            state.truncated = True
            state.held.clear()
            self._enqueue(
                EngineChunk(
                    target_id,
                    "system",
                    f"[output truncated: this target's output reached the limit of {self.cap_bytes}"
                    " bytes; the rest was not kept]",
                    _now(),
                )
            )
            return
        state.used_bytes += size
        self._enqueue(EngineChunk(target_id, stream, text, _now()))

    def _enqueue(self, chunk: EngineChunk) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk.data)
        self._written += 1
        self._wake.set()
        if self._pending_bytes >= self.flush_bytes:
            self._urgent.set()
        elif chunk.target_id not in self._heard:
            # A target's first words go out at once (an operator waits for them); what follows
            # is batched.
            self._heard.add(chunk.target_id)
            self._urgent.set()

    async def _room(self) -> None:
        """Backpressure: wait while the pending output is at its bound."""
        if self._pending_bytes < self.buffer_bytes or self._flusher_gone():
            return
        self._urgent.set()
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._pending_bytes < self.buffer_bytes or self._flusher_gone()
            )

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._urgent.wait()
            self._urgent.clear()
            self._wake.clear()
            await self._flush_once()
            if self._pending:
                self._wake.set()
            elif self._closing:
                return

    async def _flush_once(self) -> None:
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._delivering = True
        try:
            if batch:
                await self._deliver(batch)
        except Exception as exc:  # storage trouble must not stop the targets; say what failed
            log.warning("execution output could not be delivered (%s); %d chunks dropped",
                        type(exc).__name__, len(batch))
        finally:
            self._delivering = False
            self._delivered += len(batch)
            async with self._progress:
                self._progress.notify_all()
