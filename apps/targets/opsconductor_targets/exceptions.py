"""Domain errors of the targets service; each carries the HTTP status the caller sees."""

from __future__ import annotations

from opsconductor_core.problems import Conflict, Forbidden, InvalidInput, NotFound, ServiceUnavailable


class TargetNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such target")


class CredentialNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("This target has no credential")


class TargetNameTaken(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"A target named {name!r} already exists")


class AddressRefused(InvalidInput):
    def __init__(self, reason: str, field: str = "host") -> None:
        super().__init__("This address may not be a target", errors={field: reason})


class NotPresented(Conflict):
    def __init__(self) -> None:
        super().__init__("This is not the fingerprint the target last presented; run a "
                         "connection test and approve what it reports (or give the public key)")


class NotSsh(Conflict):
    def __init__(self) -> None:
        super().__init__("Host keys are pinned on SSH targets only (WinRM checks TLS certificates)")


class CallerNotAllowed(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the executor may fetch target credentials")


class MasterKeyUnavailable(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The credential master key is not available; credentials cannot be "
                         "stored or used")


class CredentialUnreadable(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The stored credential cannot be decrypted; set it again")
