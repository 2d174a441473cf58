"""Auth's domain errors; each carries its HTTP status (rendered as problem+json)."""

from __future__ import annotations

from opsconductor_core.problems import Forbidden, NotFound, ServiceUnavailable, Unauthorized


class InvalidCredentials(Unauthorized):
    """Same answer for an unknown user, a wrong password and a disabled account."""

    def __init__(self) -> None:
        super().__init__("Invalid username or password")


class InvalidRefreshToken(Unauthorized):
    def __init__(self) -> None:
        super().__init__("The refresh token is invalid, expired or revoked")


class SigningKeyUnavailable(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("No signing key is available; try again shortly")


class ApiTokenCannotMint(Forbidden):
    def __init__(self) -> None:
        super().__init__("API tokens cannot create API tokens; sign in as the user")


class PermissionNotHeld(Forbidden):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"You cannot grant permissions you do not hold: {', '.join(missing)}")


class ApiTokenNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("API token not found")
