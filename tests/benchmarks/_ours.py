"""Our side of the fan-out and memory benchmarks, shared by both scripts.

Two layers can be measured:
- "engine": apps/executor's `Engine.run(run, targets, hooks, credentials, cancel)` over an
  `SshPool`, exactly as the executor service calls it (the boundary in the issue 5 brief), with a
  recording hooks object and a dict-backed credential source that returns `TargetCredential`s with
  the pinned host key, as the targets service would.
- "connectors": libs/connectors' `SshPool` driven directly (checkout, `run`, release) under the same
  concurrency bound: what the engine adds nothing to, useful while the engine does not exist.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from opsconductor_connectors import ConnectorError, HostKeyPin, SshCredential, SshPool, SshTarget
from opsconductor_contracts.clients.targets import TargetCredential
from opsconductor_contracts.jobspec import RunRequest, RunTarget, StepSpec

COMMAND_TIMEOUT_S = 120
EXPECTED = "Linux"  # what `uname -a` prints first


def engine_import_error() -> str | None:
    """None when the engine module imports; otherwise why not (the benchmark then says so)."""
    try:
        import opsconductor_executor.engine  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def target_credentials(spec: dict[str, Any]) -> dict[str, TargetCredential]:
    """One credential per target, as `GET /internal/targets/{id}/credential` returns it."""
    pin = HostKeyPin.from_public_key(spec["host_public_key"])
    with open(spec["client_key_path"]) as fh:
        private_key = fh.read()
    return {
        target_id: TargetCredential(
            target_id=target_id,
            name=f"bench-{n:04d}",
            host=address,
            port=spec["port"],
            protocol="ssh",
            username=spec["user"],
            credential_type="private_key",
            private_key=private_key,
            version=1,
            host_key_fingerprint=pin.fingerprint,
            host_key=pin.public_key,
        )
        for n, (target_id, address) in enumerate(zip(spec["target_ids"], spec["addresses"], strict=True))
    }


@dataclass
class DictCredentials:
    """The engine's CredentialSource, backed by a dict instead of the targets service."""

    items: dict[str, TargetCredential]
    asked: int = 0

    async def get(self, target_id: str) -> TargetCredential | None:
        self.asked += 1
        return self.items.get(target_id)


@dataclass
class RecordingHooks:
    """EngineHooks that only count: what a round achieved, without keeping its output."""

    started: int = 0
    dispatched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    output_bytes: int = 0
    saw_expected: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    async def target_started(self, target_id: str, attempt: int) -> None:
        self.started += 1

    async def step_dispatched(self, target_id: str, step_index: int) -> None:
        self.dispatched += 1

    async def step_finished(self, target_id: str, step_index: int, exit_code: int | None) -> None:
        return None

    async def output(self, chunks: list[Any]) -> None:
        for chunk in chunks:
            self.output_bytes += len(chunk.data)
            if chunk.stream == "stdout" and EXPECTED in chunk.data:
                self.saw_expected.add(chunk.target_id)

    async def target_finished(self, target_id: str, outcome: Any) -> None:
        self.outcomes[outcome.status] += 1
        if outcome.status != "succeeded" and len(self.failures) < 5:
            self.failures.append(f"{target_id}: {outcome.status}: {outcome.error}")


@dataclass
class Round:
    ok: int
    failures: list[str]

    @property
    def failed(self) -> int:
        return len(self.failures)


def run_request(credentials: dict[str, TargetCredential], concurrency: int, command: str) -> RunRequest:
    return RunRequest(
        job_id=str(uuid.uuid4()),
        job_name="bench-fanout",
        job_version=1,
        requested_by=str(uuid.uuid4()),
        steps=[StepSpec(name="command", kind="command", command=command, timeout_s=COMMAND_TIMEOUT_S)],
        targets=[RunTarget(target_id=c.target_id, name=c.name, protocol="ssh") for c in credentials.values()],
        concurrency=concurrency,
    )


class EngineSide:
    """One `Engine` over one pool; every `round` is one `Engine.run` of the same job."""

    layer = "engine"

    def __init__(self, pool: SshPool, credentials: dict[str, TargetCredential]) -> None:
        from opsconductor_executor.engine import Engine, EngineSettings

        self.pool = pool
        self.engine = Engine(ssh_pool=pool, settings=EngineSettings())
        self.source = DictCredentials(credentials)

    async def round(self, concurrency: int, command: str) -> Round:
        from opsconductor_executor.engine import TargetPlan

        run = run_request(self.source.items, concurrency, command)
        plans = [TargetPlan(target_id=t.target_id, name=t.name, protocol=t.protocol) for t in run.targets]
        hooks = RecordingHooks()
        await self.engine.run(run, plans, hooks, self.source, asyncio.Event())
        succeeded = hooks.outcomes["succeeded"]
        failures = list(hooks.failures)
        missing = succeeded - len(hooks.saw_expected)
        if missing > 0:  # succeeded without the command's output: not a real success
            failures.append(f"{missing} succeeded target(s) streamed no {EXPECTED!r} on stdout")
        unreported = len(plans) - sum(hooks.outcomes.values())
        if unreported:
            failures.append(f"{unreported} target(s) never reported target_finished")
        return Round(ok=min(succeeded, len(hooks.saw_expected)), failures=failures)

    async def close(self) -> None:
        await self.engine.close()
        await self.pool.close()


class ConnectorsSide:
    """`SshPool` directly: check out a session per target, run the command, release it."""

    layer = "connectors"

    def __init__(self, pool: SshPool, credentials: dict[str, TargetCredential]) -> None:
        self.pool = pool
        self.items = credentials

    async def round(self, concurrency: int, command: str) -> Round:
        gate = asyncio.Semaphore(concurrency)

        async def one(item: TargetCredential) -> str | None:
            async with gate:
                # Built per target from the credential, as the engine has to.
                assert item.host_key is not None and item.private_key is not None
                target = SshTarget(item.host, item.port, HostKeyPin.from_public_key(item.host_key))
                credential = SshCredential(item.username, private_key=item.private_key, version=item.version)
                try:
                    async with self.pool.session(target, credential) as session:
                        result = await session.run(command, timeout_s=COMMAND_TIMEOUT_S)
                except ConnectorError as exc:
                    return f"{item.host}: {exc.stage.value}: {exc}"
                if result.exit_code != 0 or EXPECTED not in result.stdout:
                    return f"{item.host}: exit {result.exit_code}: {result.stderr[-200:]!r}"
                return None

        outcomes = await asyncio.gather(*(one(item) for item in self.items.values()))
        failures = [text for text in outcomes if text is not None]
        return Round(ok=len(outcomes) - len(failures), failures=failures)

    async def close(self) -> None:
        await self.pool.close()


# A layer name with this suffix: the same layer with kept shells off (a server session per
# command, as before they existed), for comparison in the same run.
SESSION_PER_COMMAND = ", session per command"


def chosen_layers(choice: str, engine_error: str | None, *, session_per_command: bool) -> list[str]:
    """The layers `--layer` asks for ("auto": the engine when it imports, else the connectors
    layer; "both"), each again with kept shells off if asked; exits if the engine is wanted but
    missing."""
    if choice == "auto":
        layers = ["connectors"] if engine_error else ["engine"]
    else:
        layers = ["engine", "connectors"] if choice == "both" else [choice]
    if "engine" in layers and engine_error:
        sys.exit(f"the engine is not available: {engine_error}")
    if engine_error:
        print(f"note: engine not available ({engine_error}); measuring the connectors layer", flush=True)
    if session_per_command:
        layers += [layer + SESSION_PER_COMMAND for layer in layers]
    return layers


def new_pool(*, reuse_shells: bool = True) -> SshPool:
    # Idle connections stay for the warm rounds and the memory reading; everything else default.
    return SshPool(idle_timeout_s=3600, reuse_shells=reuse_shells)


def make_side(layer: str, credentials: dict[str, TargetCredential]) -> EngineSide | ConnectorsSide:
    pool = new_pool(reuse_shells=not layer.endswith(SESSION_PER_COMMAND))
    if layer.startswith("engine"):
        return EngineSide(pool, credentials)
    return ConnectorsSide(pool, credentials)
