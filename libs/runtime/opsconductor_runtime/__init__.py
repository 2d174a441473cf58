"""Runtime port and adapters."""

from opsconductor_runtime.interface import (
    AppUnavailable,
    ETagMismatch,
    InvokeResponse,
    PublishFailed,
    Runtime,
    SecretNotFound,
    StateItem,
)

__all__ = ["AppUnavailable", "ETagMismatch", "InvokeResponse", "PublishFailed", "Runtime",
           "SecretNotFound", "StateItem"]
