"""The Dapr adapter: the Runtime port over the app's own sidecar, through the dapr SDK."""

from opsconductor_runtime.dapr.runtime import DaprRuntime

__all__ = ["DaprRuntime"]
