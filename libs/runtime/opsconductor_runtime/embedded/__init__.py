"""The embedded adapter: every app in one process, the same HTTP routes and CloudEvents as Dapr."""

from opsconductor_runtime.embedded.host import EmbeddedHost, EmbeddedRuntime

__all__ = ["EmbeddedHost", "EmbeddedRuntime"]
