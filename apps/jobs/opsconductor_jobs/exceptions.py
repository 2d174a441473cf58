"""Domain errors of the jobs service; each carries the HTTP status the caller sees."""

from __future__ import annotations

from opsconductor_core.problems import Conflict, Forbidden, InvalidInput, NotFound


class JobNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such job")


class VersionNotFound(NotFound):
    def __init__(self, version: int) -> None:
        super().__init__(f"This job has no version {version}")


class JobNameTaken(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"A job named {name!r} already exists")


class EditedConcurrently(Conflict):
    def __init__(self) -> None:
        super().__init__("The job was changed at the same time; reload it and try again")


class NotOwner(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the job's owner or an admin may change or delete it")


class RunNotAllowed(Forbidden):
    def __init__(self) -> None:
        super().__init__("Your roles may not run this job")


class DangerousStepBlocked(Forbidden):
    """A step matches a dangerous-command rule and its exact text is not approved (or the run's
    parameter values make it match one)."""

    title, slug = "Dangerous command not approved", "dangerous-command"

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("The job has dangerous steps that are not approved: "
                         + "; ".join(f"{k}: {v}" for k, v in errors.items()), errors=errors)


class StepTextChanged(Conflict):
    def __init__(self, version: int) -> None:
        super().__init__(f"The step's text is not what you reviewed (the job is at version "
                         f"{version}); review it again")


class NothingToApprove(Conflict):
    def __init__(self) -> None:
        super().__init__("This step matches no dangerous-command rule; there is nothing to approve")


class UnknownStep(InvalidInput):
    def __init__(self, version: int) -> None:
        super().__init__("No such step", errors={
            "step_name": f"the job has no step of that name at version {version}"})


class NoTargets(InvalidInput):
    def __init__(self, reason: str) -> None:
        super().__init__("No targets match", errors={"targets": reason})
