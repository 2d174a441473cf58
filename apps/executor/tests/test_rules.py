"""The rules without I/O: final states and what a replica taking over does with each target."""

from __future__ import annotations

import pytest

from opsconductor_contracts.jobspec import StepSpec
from opsconductor_executor.rules import Resume, Settle, TargetState, counts, final_status, plan_target

STEPS = [StepSpec(name="fetch", kind="command", command="true", idempotent=True),
         StepSpec(name="migrate", kind="command", command="true"),
         StepSpec(name="restart", kind="command", command="true")]


def state(status: str = "running", *, attempts: int = 1, inflight: int | None = None,
          next_step: int = 0, last_step: int | None = None,
          exit_code: int | None = None) -> TargetState:
    return TargetState("t1", status, attempts, inflight, next_step, last_step, exit_code)


class TestFinalStatus:
    @pytest.mark.parametrize(("statuses", "cancel", "timed_out", "expected"), [
        (["succeeded", "succeeded"], False, False, "succeeded"),
        (["succeeded", "succeeded"], True, False, "succeeded"),
        (["succeeded", "failed"], False, False, "failed"),
        (["succeeded", "canceled"], True, False, "canceled"),
        (["failed", "timed_out"], True, True, "canceled"),
        (["succeeded", "timed_out"], False, True, "timed_out"),
        (["succeeded", "timed_out"], False, False, "failed"),  # a step timeout, not the job's
        (["succeeded", "interrupted"], False, False, "interrupted"),
        (["failed", "interrupted"], False, False, "failed"),
        ([], False, False, "failed"),
    ])
    def test_rules(self, statuses: list[str], cancel: bool, timed_out: bool,
                   expected: str) -> None:
        assert final_status(statuses, cancel_requested=cancel, job_timed_out=timed_out) == expected

    def test_counts_add_up(self) -> None:
        tally = counts(["succeeded", "failed", "failed", "pending", "interrupted"])
        assert tally["total"] == 5
        assert (tally["succeeded"], tally["failed"], tally["pending"], tally["running"]) == (1, 2, 1, 0)
        assert counts({"running": 3, "succeeded": 1}) == counts(["running"] * 3 + ["succeeded"])


class TestPlanTarget:
    def test_finished_targets_are_left_alone(self) -> None:
        for status in ("succeeded", "failed", "timed_out", "canceled", "interrupted"):
            assert plan_target(state(status), STEPS, 1) is None

    def test_a_target_that_never_started_runs_from_the_start(self) -> None:
        assert plan_target(state("pending", attempts=0), STEPS, 1) == Resume(0, 0)

    def test_connected_but_nothing_sent_runs_from_the_start(self) -> None:
        assert plan_target(state(attempts=1), STEPS, 1) == Resume(0, 0)

    def test_a_step_that_may_have_run_is_interrupted(self) -> None:
        decision = plan_target(state(inflight=1, next_step=1, last_step=0, exit_code=0), STEPS, 1)
        assert isinstance(decision, Settle)
        assert decision.status == "interrupted"
        assert "step 2 (migrate)" in (decision.error or "")

    def test_an_idempotent_step_runs_again(self) -> None:
        assert plan_target(state(inflight=0), STEPS, 1) == Resume(0, 0)

    def test_done_steps_are_not_repeated(self) -> None:
        assert plan_target(state(next_step=2, last_step=1, exit_code=0), STEPS, 1) == Resume(2, 0)

    def test_all_steps_done_means_succeeded(self) -> None:
        decision = plan_target(state(next_step=3, last_step=2, exit_code=0), STEPS, 1)
        assert decision == Settle("succeeded", None, 0)

    def test_a_failed_last_step_fails_without_retries_left(self) -> None:
        decision = plan_target(state(next_step=1, last_step=1, exit_code=3), STEPS, 1)
        assert decision == Settle("failed", "Step 2 failed", 3)

    def test_a_failed_last_step_is_retried_when_attempts_remain(self) -> None:
        assert plan_target(state(attempts=1, next_step=1, last_step=1, exit_code=3), STEPS,
                           3) == Resume(1, 1)
