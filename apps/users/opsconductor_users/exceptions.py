"""Domain errors of the users service; each carries the HTTP status the caller sees."""

from __future__ import annotations

from opsconductor_core.problems import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized


class UserNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such user")


class RoleNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such role")


class UsernameTaken(Conflict):
    def __init__(self, username: str) -> None:
        super().__init__(f"The username {username!r} is already taken")


class RoleNameTaken(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"A role named {name!r} already exists")


class BuiltinRoleProtected(Conflict):
    """Built-in roles keep their names and cannot be deleted; admin keeps every permission."""


class LastAdmin(Conflict):
    def __init__(self) -> None:
        super().__init__("This would leave no active user with the admin role")


class SelfAction(Conflict):
    """Deleting or disabling your own account is refused."""


class PrivilegeEscalation(Forbidden):
    """The actor would hand out, or act on a user holding, permissions the actor lacks."""

    def __init__(self, detail: str, missing: frozenset[str] | set[str]) -> None:
        super().__init__(f"{detail}; you lack: {', '.join(sorted(missing))}")


class AccountUnavailable(Unauthorized):
    """The token is valid but its user no longer exists or is disabled."""

    def __init__(self) -> None:
        super().__init__("Your account no longer exists or is disabled")


class InvalidCredentials(Unauthorized):
    def __init__(self) -> None:
        super().__init__("Invalid username or password")


class WeakPassword(InvalidInput):
    def __init__(self, field: str, message: str) -> None:
        super().__init__("The password does not meet the policy", errors={field: message})


class UnknownRoles(InvalidInput):
    def __init__(self, names: list[str]) -> None:
        super().__init__("Unknown roles", errors={"roles": f"unknown role: {', '.join(names)}"})


class WrongCurrentPassword(InvalidInput):
    def __init__(self) -> None:
        super().__init__("The current password is not correct",
                         errors={"current_password": "does not match"})
