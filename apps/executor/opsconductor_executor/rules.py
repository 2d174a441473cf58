"""The rules, without I/O: an execution's final state, and where a run that lost its replica
goes on for each target."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from opsconductor_contracts.jobspec import StepSpec
from opsconductor_executor.models import (
    CANCELED,
    FAILED,
    INTERRUPTED,
    PENDING,
    SUCCEEDED,
    TARGET_STATUSES,
    TIMED_OUT,
)

TARGET_FINAL = (SUCCEEDED, FAILED, TIMED_OUT, CANCELED, INTERRUPTED)


def counts(statuses: Iterable[str] | Mapping[str, int]) -> dict[str, int]:
    """Targets per state plus `total`, from a list of states or a {state: number} tally."""
    tally = Counter(statuses) if not isinstance(statuses, Mapping) else Counter(dict(statuses))
    result = {status: tally.get(status, 0) for status in TARGET_STATUSES}
    result["total"] = sum(tally.values())
    return result


def final_status(statuses: Sequence[str], *, cancel_requested: bool, job_timed_out: bool) -> str:
    """Succeeded only if every target succeeded; otherwise canceled (cancel asked for), timed_out
    (the job's timeout hit), interrupted (some target interrupted and none failed), else failed."""
    if statuses and all(s == SUCCEEDED for s in statuses):
        return SUCCEEDED
    if cancel_requested:
        return CANCELED
    if job_timed_out:
        return TIMED_OUT
    if INTERRUPTED in statuses and FAILED not in statuses:
        return INTERRUPTED
    return FAILED


@dataclass(frozen=True)
class TargetState:
    """What is stored about one target of a run (see models.ExecutionTarget)."""

    target_id: str
    status: str
    attempts: int
    inflight_step: int | None
    next_step: int
    last_step: int | None
    exit_code: int | None


@dataclass(frozen=True)
class Resume:
    """Run this target from `first_step`, `attempts_done` attempts already spent."""

    first_step: int
    attempts_done: int


@dataclass(frozen=True)
class Settle:
    """Give this target its final state without running anything."""

    status: str
    error: str | None
    exit_code: int | None = None


# A target that has not started: from its first step, no attempt spent.
FRESH = Resume(first_step=0, attempts_done=0)


def plan_target(state: TargetState, steps: Sequence[StepSpec], max_attempts: int) -> Resume | Settle | None:
    """What a replica taking over does with one target; None when it already finished.

    A step that was sent but whose end was not seen may have run: it is not run again unless
    the job marks it idempotent. Steps known to be done are not repeated.
    """
    if state.status in TARGET_FINAL:
        return None
    if state.status == PENDING and state.attempts == 0:
        return FRESH
    current_attempt_spent = max(state.attempts - 1, 0)
    if state.inflight_step is not None:
        index = state.inflight_step
        if 0 <= index < len(steps) and steps[index].idempotent:
            return Resume(first_step=index, attempts_done=current_attempt_spent)
        name = steps[index].name if 0 <= index < len(steps) else "?"
        return Settle(INTERRUPTED,
                      f"The executor stopped while step {index + 1} ({name}) was running; it may "
                      "have run, so it was not run again")
    if state.last_step is not None and state.next_step == state.last_step:
        # The last step ended and failed: that attempt is over; a retry is left or it failed.
        if state.attempts >= max_attempts:
            return Settle(FAILED, f"Step {state.last_step + 1} failed", state.exit_code)
        return Resume(first_step=state.next_step, attempts_done=state.attempts)
    if state.next_step >= len(steps):
        # Every step ended well; only the target's end was not recorded.
        return Settle(SUCCEEDED, None, state.exit_code)
    return Resume(first_step=state.next_step, attempts_done=current_attempt_spent)
