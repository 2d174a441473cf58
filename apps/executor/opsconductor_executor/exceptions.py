"""Domain errors of the executor service; each carries the HTTP status the caller sees."""

from __future__ import annotations

from opsconductor_core.problems import Conflict, Forbidden, InvalidInput, NotFound, ServiceUnavailable


class ExecutionNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such execution")


class CallerNotAllowed(Forbidden):
    def __init__(self, allowed: str) -> None:
        super().__init__(f"Only {allowed} may call this route")


class AlreadyFinished(Conflict):
    def __init__(self, status: str) -> None:
        super().__init__(f"The execution already finished ({status})")


class NotFinished(Conflict):
    def __init__(self) -> None:
        super().__init__("The execution has not finished yet; retry its failed targets after it "
                         "ends")


class NothingToRetry(Conflict):
    def __init__(self) -> None:
        super().__init__("No target of this execution failed, timed out or was interrupted")


class IdempotencyKeyReused(Conflict):
    def __init__(self) -> None:
        super().__init__("This idempotency key was used for a run of another job")


class InvalidRunRequest(InvalidInput):
    def __init__(self, detail: str, errors: dict[str, str]) -> None:
        super().__init__(detail, errors=errors)


class SecretKeyUnavailable(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The key that protects secret parameter values is not available; runs "
                         "with secret parameters cannot start")
