"""Cron input bindings read from components/*.yaml, fired the way Dapr fires them:
a POST to /<binding name> on every app the component is scoped to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from croniter import croniter

log = logging.getLogger("opsconductor.embedded.bindings")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}


@dataclass(frozen=True)
class CronBinding:
    name: str
    schedule: str
    scopes: tuple[str, ...]


def parse_go_duration(text: str) -> float:
    """`@every` takes a Go duration such as 15s, 1m30s, 500ms."""
    text = text.strip()
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


class Schedule:
    """Next fire time for Dapr's cron syntax: @every, macros, 5 fields, or 6 with seconds first."""

    def __init__(self, expression: str) -> None:
        expression = expression.strip()
        self.interval: float | None = None
        self.cron: str | None = None
        if expression.startswith("@every "):
            self.interval = parse_go_duration(expression[len("@every "):])
            return
        expression = _MACROS.get(expression, expression)
        fields = expression.split()
        if len(fields) == 6:
            # Dapr puts seconds first; croniter expects them last.
            expression = " ".join(fields[1:] + fields[:1])
        elif len(fields) != 5:
            raise ValueError(f"not a cron schedule: {expression!r}")
        if not croniter.is_valid(expression):
            raise ValueError(f"not a cron schedule: {expression!r}")
        self.cron = expression

    def seconds_until_next(self, now: float) -> float:
        if self.interval is not None:
            return self.interval
        assert self.cron is not None
        following = croniter(self.cron, datetime.fromtimestamp(now, UTC)).get_next(float)
        return max(0.0, following - now)


def load_cron_bindings(components_dir: Path | None) -> list[CronBinding]:
    if components_dir is None or not components_dir.is_dir():
        return []
    bindings = []
    for path in sorted(components_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "Component":
                continue
            spec = doc.get("spec") or {}
            if spec.get("type") != "bindings.cron":
                continue
            meta = {m.get("name"): m.get("value") for m in spec.get("metadata") or []}
            if not meta.get("schedule"):
                continue
            bindings.append(CronBinding(name=doc["metadata"]["name"], schedule=str(meta["schedule"]),
                                        scopes=tuple(doc.get("scopes") or ())))
    return bindings


Fire = Callable[[str, str], Awaitable[int]]


class CronScheduler:
    def __init__(self, bindings: list[CronBinding], fire: Fire, app_ids: Callable[[], list[str]]):
        self._bindings = bindings
        self._fire = fire
        self._app_ids = app_ids
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for binding in self._bindings:
            schedule = Schedule(binding.schedule)
            self._tasks.append(asyncio.create_task(self._loop(binding, schedule),
                                                   name=f"cron:{binding.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, binding: CronBinding, schedule: Schedule) -> None:
        while True:
            await asyncio.sleep(schedule.seconds_until_next(time.time()))
            targets = [a for a in self._app_ids() if not binding.scopes or a in binding.scopes]
            for app_id in targets:
                try:
                    status = await self._fire(app_id, "/" + binding.name)
                    if status >= 400 and status not in (404, 405):
                        log.warning("binding handler failed",
                                    extra={"binding": binding.name, "app_id": app_id,
                                           "status": status})
                except Exception:
                    log.exception("binding delivery error", extra={"binding": binding.name})
