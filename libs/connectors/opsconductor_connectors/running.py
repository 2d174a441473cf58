"""A started command, the same for SSH and WinRM: stream its output, wait for it, cancel it."""

from __future__ import annotations

import asyncio
import codecs
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable

from opsconductor_connectors.errors import ConnectorError, Stage, timeout_error
from opsconductor_connectors.results import CommandResult, OutputChunk, StreamName

OutputCallback = Callable[[OutputChunk], None]
DEFAULT_MAX_CAPTURE_BYTES = 8 * 1024 * 1024
# Past this many unread chunks the transport stops reading, so a slow consumer slows the
# remote command (flow control) instead of filling memory.
QUEUE_HIGH_WATER = 256
QUEUE_LOW_WATER = 64


class RunningCommand(ABC):
    """Output arrives through `_feed`; the transport calls `_finish` once the command ended.

    Consumers either iterate (`async for chunk in running`), pass `on_output`, or just `wait()`.
    """

    def __init__(
        self,
        *,
        on_output: OutputCallback | None = None,
        stream: bool = True,
        max_capture_bytes: int = DEFAULT_MAX_CAPTURE_BYTES,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._on_output = on_output
        self._queue: asyncio.Queue[OutputChunk | None] | None = asyncio.Queue() if stream else None
        self._paused = False
        self._max_capture = max_capture_bytes
        self._captured = {"stdout": 0, "stderr": 0}
        self._parts: dict[StreamName, list[str]] = {"stdout": [], "stderr": []}
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._truncated = False
        self._exit_code: int | None = None
        self._exit_signal: str | None = None
        self._canceled = False
        self._error: ConnectorError | None = None
        self._done = asyncio.Event()
        self.timings: dict[str, float] = {}

    # --- transport side ------------------------------------------------------------------------

    def _feed(self, stream: StreamName, data: bytes, *, final: bool = False) -> None:
        text = self._decoders[stream].decode(data, final=final)
        if not text:
            return
        if self._captured[stream] < self._max_capture:
            room = self._max_capture - self._captured[stream]
            kept = text[:room]
            self._parts[stream].append(kept)
            self._captured[stream] += len(kept)
            self._truncated = self._truncated or len(kept) < len(text)
        else:
            self._truncated = True
        chunk = OutputChunk(stream, text)
        if self._on_output is not None:
            self._on_output(chunk)
        if self._queue is not None:
            self._queue.put_nowait(chunk)
            if not self._paused and self._queue.qsize() >= QUEUE_HIGH_WATER:
                self._paused = True
                self._pause_reading()

    def _finish(
        self,
        exit_code: int | None,
        exit_signal: str | None = None,
        error: ConnectorError | None = None,
    ) -> None:
        if self._done.is_set():
            return
        self._feed("stdout", b"", final=True)
        self._feed("stderr", b"", final=True)
        self._exit_code = exit_code
        self._exit_signal = exit_signal
        self._error = error
        self.timings["command"] = (time.monotonic() - self._started) * 1000
        if self._queue is not None:
            self._queue.put_nowait(None)
        self._done.set()

    def _pause_reading(self) -> None:  # noqa: B027 - optional flow-control hook
        """Stop reading from the transport (flow control); optional."""

    def _resume_reading(self) -> None:  # noqa: B027 - optional flow-control hook
        """Resume reading from the transport; optional."""

    @abstractmethod
    async def _terminate(self, grace_s: float) -> None:
        """Stop the remote command (signal, then force) and return once it is gone."""

    # --- consumer side -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> CommandResult:
        return CommandResult(
            stdout="".join(self._parts["stdout"]),
            stderr="".join(self._parts["stderr"]),
            exit_code=self._exit_code,
            exit_signal=self._exit_signal,
            canceled=self._canceled,
            truncated=self._truncated,
            duration_ms=(time.monotonic() - self._started) * 1000,
            timings=dict(self.timings),
        )

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        if self._queue is None:
            raise RuntimeError("this command was started with stream=False")
        while True:
            chunk = await self._queue.get()
            if self._paused and self._queue.qsize() <= QUEUE_LOW_WATER:
                self._paused = False
                self._resume_reading()
            if chunk is None:
                return
            yield chunk

    async def wait(self, timeout_s: float | None = None, *, grace_s: float = 2.0) -> CommandResult:
        """The result once the command ended; past `timeout_s` it is stopped and TIMEOUT raised."""
        if self._queue is not None and self._paused:
            # Nobody iterates any more: let the transport deliver the rest.
            self._paused = False
            self._resume_reading()
        try:
            async with asyncio.timeout(timeout_s):
                await self._done.wait()
        except TimeoutError:
            await self._stop(grace_s)
            raise timeout_error(Stage.COMMAND, timeout_s or 0.0, partial=self.result()) from None
        if self._error is not None:
            self._error.partial = self.result()
            raise self._error
        return self.result()

    async def cancel(self, *, grace_s: float = 2.0) -> CommandResult:
        """Stop the command (TERM, then KILL after `grace_s`); the result says canceled."""
        if not self.done:
            self._canceled = True
            await self._stop(grace_s)
        return self.result()

    async def _stop(self, grace_s: float) -> None:
        try:
            await self._terminate(grace_s)
        finally:
            if not self.done:
                self._finish(None, None)
