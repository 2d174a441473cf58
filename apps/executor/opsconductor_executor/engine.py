"""The fan-out core: runs one execution's steps on its targets over SSH and WinRM.

`Engine.run` works through the targets with at most `run.concurrency` at a time (a fixed set of
workers pulling from a queue, so thousands of pending targets cost nothing and a cancel finishes
them at once). Per target: fetch its credential, open a pooled SSH session (or a WinRM client),
then run the steps in order, each preceded by `hooks.step_dispatched` (crash recovery relies on
it). Output streams through `OutputCollector` (masked, capped, batched). A cancel or the job's
deadline stops everything: pending targets end without connecting, running commands are
signalled (SSH: TERM to the command's process group, then KILL and channel close after the
grace; WinRM: Signal terminate), and `run` returns within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from opsconductor_connectors import ConnectorError, RunningCommand, SshPool, Stage
from opsconductor_contracts.clients.targets import TargetCredential
from opsconductor_contracts.jobspec import RunRequest
from opsconductor_executor.output import EngineChunk, OutputCollector
from opsconductor_executor.steps import (
    MissingParameter,
    RenderedStep,
    SshTransport,
    StepTimedOut,
    Transport,
    WinrmTransport,
    parameter_values,
    render_steps,
    ssh_endpoint,
)

__all__ = [
    "CredentialSource",
    "Engine",
    "EngineChunk",
    "EngineHooks",
    "EngineSettings",
    "TargetOutcome",
    "TargetPlan",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
TargetStatus = Literal["succeeded", "failed", "timed_out", "canceled"]


@dataclass
class TargetPlan:
    """One target of a claimed execution."""

    target_id: str
    name: str
    protocol: Literal["ssh", "winrm"]
    first_step: int = 0  # resume point after recovery
    attempts_done: int = 0


@dataclass
class TargetOutcome:
    status: TargetStatus
    exit_code: int | None
    attempts: int
    error: str | None
    started_at: datetime | None
    finished_at: datetime
    output_truncated: bool


class EngineHooks(Protocol):
    async def target_started(self, target_id: str, attempt: int) -> None: ...
    # Called BEFORE a step's command/upload is sent, so crash recovery knows it may have run.
    async def step_dispatched(self, target_id: str, step_index: int) -> None: ...
    async def step_finished(self, target_id: str, step_index: int, exit_code: int | None) -> None: ...
    async def output(self, chunks: list[EngineChunk]) -> None: ...
    async def target_finished(self, target_id: str, outcome: TargetOutcome) -> None: ...


class CredentialSource(Protocol):
    async def get(self, target_id: str) -> TargetCredential | None: ...


@dataclass(frozen=True)
class EngineSettings:
    output_cap_bytes: int = 1024 * 1024  # per target; then one "system" chunk says truncated
    flush_interval_s: float = 0.05
    flush_bytes: int = 64 * 1024
    # Output waiting for hooks.output; past it, targets' channels stop being read (backpressure).
    output_buffer_bytes: int = 1024 * 1024
    default_step_timeout_s: float | None = 3600.0
    connect_timeout_s: float = 30.0  # credential + pooled session (login included), or WinRM shell
    cancel_grace_s: float = 0.5  # TERM, then KILL and channel close this much later
    # A stop waits this long for a signalled command to end; its termination then goes on in
    # the background (Engine.close waits for it), so a cancel never waits on a slow host.
    cancel_wait_s: float = 0.25
    winrm_operation_timeout_s: int = 20
    allow_insecure_winrm_http: bool = False  # Basic over plain HTTP (test peers only)


class _Stopped(Exception):
    """The execution was canceled or ran out of time."""

    def __init__(self, status: TargetStatus) -> None:
        super().__init__(status)
        self.status = status


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: ConnectorError) -> str:
    return f"{exc.reported_stage.value}: {exc.message}"


class Engine:
    def __init__(self, *, ssh_pool: SshPool, settings: EngineSettings | None = None) -> None:
        self.pool = ssh_pool
        self.settings = settings or EngineSettings()
        self._background: set[asyncio.Task[Any]] = set()

    async def run(
        self,
        run: RunRequest,
        targets: list[TargetPlan],
        hooks: EngineHooks,
        credentials: CredentialSource,
        cancel: asyncio.Event,
    ) -> None:
        """Run `targets`; every one gets exactly one `hooks.target_finished`."""
        await _Execution(self, run, hooks, credentials, cancel).run(targets)

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """A termination still in progress after a stop: finished unwatched, awaited by close()."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Let terminations in progress finish (bounded), then close the SSH pool."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=15.0)
        await self.pool.close()


class _Execution:
    def __init__(
        self,
        engine: Engine,
        run: RunRequest,
        hooks: EngineHooks,
        credentials: CredentialSource,
        cancel: asyncio.Event,
    ) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.run_request = run
        self.hooks = hooks
        self.credentials = credentials
        self.cancel = cancel
        self.values = parameter_values(run)
        self.stop_status: TargetStatus | None = None
        self.stopped = asyncio.Event()
        s = self.settings
        self.output = OutputCollector(
            hooks.output,
            secrets=run.secret_values.values(),
            cap_bytes=s.output_cap_bytes,
            flush_interval_s=s.flush_interval_s,
            flush_bytes=s.flush_bytes,
            buffer_bytes=s.output_buffer_bytes,
        )
        self._stop_waiter: asyncio.Task[Any] | None = None

    async def run(self, plans: list[TargetPlan]) -> None:
        if not plans:
            return
        queue = deque(plans)
        self.output.start()
        self._stop_waiter = asyncio.create_task(self.stopped.wait())
        watcher = asyncio.create_task(self._watch())
        workers = min(self.run_request.concurrency, len(plans))
        # On a stop, targets still waiting end at once, while the workers wait for their
        # commands to stop.
        closer = asyncio.create_task(self._close_waiting(queue))
        try:
            await asyncio.gather(*(self._worker(queue) for _ in range(workers)))
            if self.stopped.is_set():
                await closer
        finally:
            closer.cancel()
            watcher.cancel()
            self._stop_waiter.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.output.close()

    async def _watch(self) -> None:
        """Turns the cancel event or the job's deadline into one stop."""
        timeout_s = self.run_request.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self.cancel.wait()
            self.stop_status = "canceled"
        except TimeoutError:
            self.stop_status = "canceled" if self.cancel.is_set() else "timed_out"
        self.stopped.set()

    async def _close_waiting(self, queue: deque[TargetPlan]) -> None:
        await self.stopped.wait()
        await self._worker(queue)

    async def _worker(self, queue: deque[TargetPlan]) -> None:
        while queue:
            plan = queue.popleft()
            target = _TargetRun(self, plan)
            try:
                outcome = await target.run()
            except Exception:
                # A hook failed (e.g. progress could not be stored): no further step is sent.
                log.exception("target %s stopped: the engine's hooks failed", plan.target_id)
                message = "the executor could not record this target's progress"
                self.output.system(plan.target_id, message)
                outcome = target._outcome(_Attempt("failed", target.exit_code, message))
            await self.output.drain()  # its output is stored before the status says it ended
            try:
                await self.hooks.target_finished(plan.target_id, outcome)
            except Exception:
                log.exception("hooks.target_finished failed for target %s", plan.target_id)

    # --- stop-aware waiting ---------------------------------------------------------------------

    async def race(self, awaitable: Awaitable[T], timeout_s: float | None = None) -> T:
        """`awaitable`'s result, unless the execution stops first (_Stopped) or the timeout hits
        (TimeoutError); either way the work is canceled."""
        task = asyncio.ensure_future(awaitable)
        if self.stopped.is_set():
            await self._abandon(task)
            raise _Stopped(self.stop_status or "canceled")
        assert self._stop_waiter is not None
        try:
            done, _ = await asyncio.wait(
                {task, self._stop_waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        await self._abandon(task)
        if self.stopped.is_set():
            raise _Stopped(self.stop_status or "canceled")
        raise TimeoutError

    async def _abandon(self, task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.wait({task}, timeout=self.settings.cancel_wait_s)

    async def sleep(self, seconds: float) -> None:
        await self.race(asyncio.sleep(max(seconds, 0)))

    async def watch_command(self, target_id: str, running: RunningCommand, limit: float | None) -> None:
        """Stream the command's output until it ends; stop it on a stop or its timeout."""
        pump = asyncio.create_task(self._pump(target_id, running))
        assert self._stop_waiter is not None
        try:
            done, _ = await asyncio.wait(
                {pump, self._stop_waiter}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            pump.cancel()
            self.engine._keep(asyncio.ensure_future(running.cancel(grace_s=self.settings.cancel_grace_s)))
            raise
        if pump in done:
            pump.result()
            return
        await self.terminate(running)
        # An ended command's last output is already queued; a stuck one's is not waited for.
        if running.done:
            await asyncio.wait({pump}, timeout=self.settings.cancel_wait_s)
        if not pump.done():
            pump.cancel()
            self.output.end_stream(target_id)
        if self.stopped.is_set():
            raise _Stopped(self.stop_status or "canceled")
        raise StepTimedOut

    async def follow(self, target_id: str, running: RunningCommand, limit: float | None) -> int | None:
        """Watch a started command to its end: its exit code, or ConnectorError if the link broke."""
        if self.stopped.is_set():
            await self.terminate(running)
            raise _Stopped(self.stop_status or "canceled")
        await self.watch_command(target_id, running, limit)
        result = await running.wait()
        if result.exit_code is None and result.exit_signal:
            raise ConnectorError(Stage.COMMAND, f"killed by signal {result.exit_signal}")
        return result.exit_code

    def note(self, target_id: str, message: str) -> None:
        self.output.system(target_id, message)

    async def _pump(self, target_id: str, running: RunningCommand) -> None:
        try:
            async for chunk in running:
                await self.output.write(target_id, chunk.stream, chunk.data)
        finally:
            self.output.end_stream(target_id)

    async def terminate(self, running: RunningCommand) -> None:
        """Signal the command; wait a bounded time, then let the rest happen in the background."""
        task = asyncio.ensure_future(running.cancel(grace_s=self.settings.cancel_grace_s))
        done, _ = await asyncio.wait({task}, timeout=self.settings.cancel_wait_s)
        if not done:
            self.engine._keep(task)


@dataclass
class _Attempt:
    status: TargetStatus
    exit_code: int | None = None
    error: str | None = None
    failed_step: int = 0
    stopped: bool = False  # ended by cancel or the job deadline: never retried


@dataclass
class _TargetRun:
    ex: _Execution
    plan: TargetPlan
    started_at: datetime | None = None
    attempts: int = 0
    exit_code: int | None = field(default=None)
    # The credential, asked for while the start is being stored (the first attempt uses it).
    credential: asyncio.Future[TargetCredential | None] | None = None
    # The attempt's start being stored; the first step waits for it (see `_start_stored`).
    start_write: asyncio.Future[None] | None = None

    @property
    def target_id(self) -> str:
        return self.plan.target_id

    async def run(self) -> TargetOutcome:
        ex, plan = self.ex, self.plan
        self.attempts = plan.attempts_done
        if ex.stopped.is_set():
            why = "canceled" if ex.stop_status == "canceled" else "the job's time limit ran out"
            return self._outcome(_Attempt(ex.stop_status or "canceled", error=f"{why} before it started"))
        self.credential = asyncio.ensure_future(ex.credentials.get(self.target_id))
        try:
            return await self._attempts(plan.first_step, 1 + ex.run_request.retry.count)
        finally:
            if self.credential is not None:
                # Not used (the start could not be stored): dropped quietly.
                self.credential.cancel()
                self.credential.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _attempts(self, first_step: int, allowed: int) -> TargetOutcome:
        ex, plan = self.ex, self.plan
        retry = ex.run_request.retry
        while True:
            self.attempts += 1
            # Stored while the credential is fetched and the session checked out: the writer
            # keeps order, and no step is dispatched before the start is stored.
            self.start_write = asyncio.ensure_future(
                ex.hooks.target_started(self.target_id, self.attempts))
            self.started_at = self.started_at or _now()
            try:
                result = await self._attempt(first_step)
                await self._start_stored()
            finally:
                if self.start_write is not None:  # left by an exception: its error is not news
                    self.start_write.add_done_callback(lambda f: f.cancelled() or f.exception())
                    self.start_write = None
            if result.status == "succeeded" or result.stopped or self.attempts >= allowed:
                return self._outcome(result)
            delay = retry.delay_s * retry.backoff ** (self.attempts - plan.attempts_done - 1)
            ex.output.system(
                self.target_id,
                f"attempt {self.attempts} {result.status.replace('_', ' ')}; retrying from step"
                f" {result.failed_step + 1} in {delay:g}s",
            )
            try:
                await ex.sleep(delay)
            except _Stopped as stop:
                return self._outcome(_Attempt(stop.status, result.exit_code, result.error, stopped=True))
            first_step = result.failed_step

    async def _start_stored(self) -> None:
        """Wait until this attempt's start is stored (raising what storing it raised)."""
        if self.start_write is not None:
            write, self.start_write = self.start_write, None
            await write

    def _outcome(self, result: _Attempt) -> TargetOutcome:
        return TargetOutcome(
            status=result.status,
            exit_code=result.exit_code,
            attempts=self.attempts,
            error=result.error,
            started_at=self.started_at,
            finished_at=_now(),
            output_truncated=self.ex.output.truncated(self.target_id),
        )

    def _failed(self, message: str, step: int, status: TargetStatus = "failed") -> _Attempt:
        self.ex.output.system(self.target_id, message)
        return _Attempt(status, self.exit_code, message, step)

    async def _attempt(self, first_step: int) -> _Attempt:
        ex = self.ex
        try:
            try:
                steps = render_steps(ex.run_request.steps, ex.values, self.plan.protocol,
                                     ex.run_request.secret_values.keys())
            except MissingParameter as exc:
                return self._failed(str(exc), first_step)
            prefetched, self.credential = self.credential, None
            try:
                credential = await ex.race(
                    prefetched if prefetched is not None else ex.credentials.get(self.target_id),
                    timeout_s=ex.settings.connect_timeout_s,
                )
            except TimeoutError:
                return self._failed("the target's credential could not be fetched in time", first_step)
            if credential is None:
                return self._failed("no credential is available for this target", first_step)
            if credential.protocol != self.plan.protocol:
                return self._failed(
                    f"the target now uses {credential.protocol}, not {self.plan.protocol}", first_step
                )
            try:
                async with self._transport(credential) as transport:
                    return await self._steps(transport, steps, first_step)
            except ConnectorError as exc:  # the connection could not be opened
                return self._failed(_describe(exc), first_step)
        except _Stopped as stop:
            return _Attempt(stop.status, self.exit_code, self._stop_message(stop), first_step, stopped=True)

    def _stop_message(self, stop: _Stopped) -> str:
        return "canceled" if stop.status == "canceled" else "the job's time limit ran out"

    @contextlib.asynccontextmanager
    async def _transport(self, credential: TargetCredential) -> AsyncIterator[Transport]:
        if credential.protocol == "winrm":
            s = self.ex.settings
            yield WinrmTransport(
                self.ex,
                credential,
                connect_timeout_s=s.connect_timeout_s,
                operation_timeout_s=s.winrm_operation_timeout_s,
                allow_insecure_http=s.allow_insecure_winrm_http,
            )
            return
        target, ssh_credential = ssh_endpoint(credential)
        checkout = self.ex.engine.pool.session(target, ssh_credential)
        try:
            session = await self.ex.race(checkout.__aenter__(), self.ex.settings.connect_timeout_s)
        except TimeoutError:
            raise ConnectorError(
                Stage.TIMEOUT,
                f"no session within {self.ex.settings.connect_timeout_s:g}s",
                during=Stage.CONNECT,
            ) from None
        try:
            yield SshTransport(self.ex, session)
        finally:
            await checkout.__aexit__(None, None, None)

    async def _steps(self, transport: Transport, steps: list[RenderedStep], first: int) -> _Attempt:
        ex, failure = self.ex, None
        for step in steps[first:]:
            if ex.stopped.is_set():
                raise _Stopped(ex.stop_status or "canceled")
            limit = step.timeout_s or ex.settings.default_step_timeout_s
            label = f"step {step.index + 1} ({step.name})"
            await self._start_stored()
            await ex.hooks.step_dispatched(self.target_id, step.index)
            exit_code: int | None = None
            try:
                exit_code = await transport.run_step(self.target_id, step, limit)
                status: TargetStatus = "failed"
                problem = None if exit_code == 0 else f"{label} exited with {exit_code}"
                if exit_code is None:
                    problem = f"{label} ended without an exit status"
            except StepTimedOut:
                problem, status = f"{label} timed out after {limit:g}s", "timed_out"
            except ConnectorError as exc:
                problem, status = f"{label}: {_describe(exc)}", "failed"
            except _Stopped:
                await ex.hooks.step_finished(self.target_id, step.index, None)
                raise
            self.exit_code = exit_code
            await ex.hooks.step_finished(self.target_id, step.index, exit_code)
            if problem is None:
                continue
            if step.continue_on_error:
                ex.output.system(self.target_id, f"{problem}; continuing (continue on error)")
                continue
            failure = self._failed(problem, step.index, status)
            break
        return failure or _Attempt("succeeded", self.exit_code)
