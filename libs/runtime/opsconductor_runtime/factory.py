"""Picks the adapter for an app started on its own (`uvicorn --factory ...:create_app`)."""

from __future__ import annotations

import os

from opsconductor_runtime.interface import Runtime


def runtime_from_env(app_id: str) -> Runtime:
    """OPSC_RUNTIME=dapr: the app's own sidecar, found the way the dapr SDK finds it
    (DAPR_HTTP_PORT, DAPR_GRPC_PORT, DAPR_API_TOKEN)."""
    mode = os.environ.get("OPSC_RUNTIME", "embedded")
    if mode == "dapr":
        from opsconductor_runtime.dapr import DaprRuntime

        return DaprRuntime.from_env(app_id)
    raise RuntimeError(
        f"{app_id}: the embedded runtime is created by the platform host; "
        "start the platform with `opsconductor up` instead of running one app alone")


def runtime_or_default(runtime: Runtime | None, app_id: str) -> tuple[Runtime, bool]:
    """The runtime a host passed in, or one built from the environment, which the app then owns
    (and closes on shutdown): `(runtime, owned)`."""
    if runtime is not None:
        return runtime, False
    return runtime_from_env(app_id), True
