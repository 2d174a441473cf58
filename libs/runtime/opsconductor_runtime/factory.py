"""Picks the adapter for an app started on its own (`uvicorn --factory ...:create_app`)."""

from __future__ import annotations

import os

from opsconductor_runtime.interface import Runtime


def runtime_from_env(app_id: str) -> Runtime:
    mode = os.environ.get("OPSC_RUNTIME", "embedded")
    if mode == "dapr":
        raise RuntimeError(
            "the Dapr runtime adapter is not part of this release yet; "
            "run `opsconductor up` (embedded mode)")
    raise RuntimeError(
        f"{app_id}: the embedded runtime is created by the platform host; "
        "start the platform with `opsconductor up` instead of running one app alone")
