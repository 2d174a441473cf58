"""Bindings: the cron tick (components/targets-health.yaml) drives the health sweep.

The targets service subscribes to no topic; it only publishes (through its outbox).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opsconductor_contracts.components import TARGETS_HEALTH_BINDING

bindings = APIRouter(include_in_schema=False)


@bindings.options(f"/{TARGETS_HEALTH_BINDING}")
async def health_binding_probe() -> dict[str, str]:
    """The sidecar asks whether the app listens to the binding before it starts delivering."""
    return {"status": "SUCCESS"}


@bindings.post(f"/{TARGETS_HEALTH_BINDING}")
async def health_tick(request: Request) -> dict[str, Any]:
    """Cron tick: reload the master keyring, re-wrap old data keys, check every target."""
    result: dict[str, Any] = await request.app.state.sweeper.tick()
    return result
