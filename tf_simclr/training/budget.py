"""Training for a time budget (--train_minutes): how many steps fit, measured while training.

A pure unit (no TensorFlow). The training loop reads a `TrainingClock` after each loop of
`steps_per_loop` steps and tells a `BudgetPlanner` the step it reached and the training time so
far; the planner answers with a `BudgetPlan` when it has one to lay the learning-rate schedule
out over:

1. The first loop of a process traces the training function and fills the input pipeline. Its
   time counts against the budget (the user's "training takes M minutes" is wall-clock time),
   but not towards the speed, which a longer run would not pay again.
2. After `measure_loops` more loops, the first estimate: seconds per step over the loops after
   the first, and planned steps = steps done + floor(remaining budget / seconds per step).
3. Once the loops after the first have taken `reestimate_fraction` of the budget (and at least
   one loop ran on the first estimate), the estimate is made again over all of them, and that
   plan is fixed: the schedule then ends exactly at its planned last step.

Training time is wall-clock time from the start of the training loop (input pipeline, tracing,
steps, logs and checkpoint saves), summed over the attempts of a resumed run; building the
network before it and the evaluation and export after it are not counted.

The warmup under a budget (`WarmupRule`): --warmup_epochs in steps, but at most
MAX_WARMUP_FRACTION of the planned steps, the warmup's share of the default pretraining
schedule (2 of 12 epochs), so a short budget is not all warmup.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from fractions import Fraction

# The training loop's bound while a budget run's steps are not planned yet (far beyond any run;
# the schedule decays over this many steps until then, so its rate stays at the base rate).
UNPLANNED_STEPS = 2**62
# At most this share of the planned steps warms up (the default pretraining schedule's share:
# --warmup_epochs=2 of --train_epochs=12).
MAX_WARMUP_FRACTION = Fraction(1, 6)  # exact: 1/6 of 210 steps is 35, not 34.999...
# Loops timed after the first (traced) one before the first estimate.
MEASURE_LOOPS = 2
# The share of the budget measured after the first loop before the re-estimate that fixes the plan.
REESTIMATE_FRACTION = 0.05


def format_minutes(minutes: float) -> str:
    """Minutes as a results line shows them: one decimal, two below a minute ("0.45")."""
    return f"{minutes:.1f}" if minutes >= 1 else f"{minutes:.2f}"


class BudgetTooShortError(ValueError):
    """The budget cannot hold the training the first loops show it needs."""


@dataclasses.dataclass(frozen=True)
class WarmupRule:
    """How many of the planned steps warm up: --warmup_epochs in steps (`epoch_steps`), at
    most `max_fraction` of the planned steps (rounded down)."""

    epoch_steps: int
    max_fraction: Fraction = MAX_WARMUP_FRACTION

    def steps_for(self, planned_steps: int) -> int:
        return min(self.epoch_steps, math.floor(planned_steps * self.max_fraction))


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """The steps a budget holds, as estimated at step `planned_at_step` after
    `planned_at_seconds` of training; `fixed`: the re-estimate, which is kept to the end."""

    budget_minutes: float
    planned_steps: int
    warmup_steps: int
    seconds_per_step: float
    measured_steps: int  # the steps the speed was measured over
    planned_at_step: int
    planned_at_seconds: float
    fixed: bool

    def to_record(self) -> dict:
        """The plan as config.json records it (a JSON object)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> BudgetPlan:
        """The plan a `to_record` dict holds."""
        return cls(**record)

    def short(self) -> str:
        """The plan in a few words, for the progress bar."""
        return f"budget {format_minutes(self.budget_minutes)} min: {self.planned_steps:,} steps"

    def describe(self) -> str:
        """The log line of the plan."""
        speed = (
            f"{self.planned_steps:,} steps planned at {self.seconds_per_step:.3g} s/step "
            f"(measured over {self.measured_steps:,} steps; {self.planned_at_seconds:.0f} s of "
            f"training up to step {self.planned_at_step:,})"
        )
        if self.fixed:
            return (
                f"Time budget {format_minutes(self.budget_minutes)} min, re-estimated: {speed}. The plan "
                f"is fixed: warmup {self.warmup_steps:,} steps, then cosine decay to 0 at step "
                f"{self.planned_steps:,}."
            )
        return (
            f"Time budget {format_minutes(self.budget_minutes)} min: {speed}; re-estimated once "
            f"{100 * REESTIMATE_FRACTION:.0f}% of the budget is measured."
        )


def describe_result(summary: dict) -> str:
    """The results table's line of a budget run from its plan's record with "train_seconds",
    the training time (None: not recorded): that time against the budget."""
    plan = BudgetPlan.from_record({k: v for k, v in summary.items() if k != "train_seconds"})
    train_seconds = summary.get("train_seconds")
    took = "" if train_seconds is None else f"{format_minutes(train_seconds / 60)} min of "
    return (
        f"Training time {took}a {format_minutes(plan.budget_minutes)} min budget, {plan.planned_steps:,} "
        f"steps (planned at {plan.seconds_per_step:.3g} s/step, measured over "
        f"{plan.measured_steps:,} steps)."
    )


class TrainingClock:
    """A run's training time: seconds since this clock was made (by `clock`, a monotonic
    seconds function; tests give a fake one) plus `offset`, the training time the attempts it
    resumes recorded. Also says when a checkpoint is due every `checkpoint_seconds` of it."""

    def __init__(
        self,
        offset: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        checkpoint_seconds: float = 0.0,
    ) -> None:
        self.offset = offset
        self.clock = clock
        self.start = clock()
        self.checkpoint_seconds = checkpoint_seconds
        # The multiple of checkpoint_seconds last passed (the resumed run's, to start with).
        self._interval = math.floor(offset / checkpoint_seconds) if checkpoint_seconds else 0

    def elapsed(self) -> float:
        return self.offset + self.clock() - self.start

    def checkpoint_due(self, elapsed: float) -> bool:
        """Whether training time `elapsed` passed another multiple of checkpoint_seconds
        (True once per multiple; always False without checkpoint_seconds)."""
        if not self.checkpoint_seconds:
            return False
        interval = math.floor(elapsed / self.checkpoint_seconds)
        due = interval > self._interval
        self._interval = max(interval, self._interval)
        return due


class BudgetPlanner:
    """Plans the steps of `budget_minutes` of training from the speed of the first loops (see
    the module's docstring); `after_loop` is called at the end of every loop."""

    def __init__(
        self,
        budget_minutes: float,
        steps_per_loop: int,
        warmup: WarmupRule,
        *,
        measure_loops: int = MEASURE_LOOPS,
        reestimate_fraction: float = REESTIMATE_FRACTION,
    ) -> None:
        if not (math.isfinite(budget_minutes) and budget_minutes > 0):
            raise ValueError(f"budget_minutes must be a positive number, got {budget_minutes}.")
        self.budget_minutes = budget_minutes
        self.budget_seconds = 60 * budget_minutes
        self.steps_per_loop = steps_per_loop
        self.warmup = warmup
        self.measure_loops = measure_loops
        self.reestimate_fraction = reestimate_fraction
        self.plan: BudgetPlan | None = None  # the latest
        self._loops = 0
        self._first: tuple[int, float] | None = None  # (step, elapsed) at the first loop's end

    def after_loop(self, step: int, elapsed: float) -> BudgetPlan | None:
        """The new plan after a loop that ended at `step` with `elapsed` seconds of training
        (None: no change). Raises BudgetTooShortError at the first estimate when not even one
        more loop fits the budget."""
        self._loops += 1
        if self._first is None:
            self._first = (step, elapsed)
            return None
        if self.plan is not None and self.plan.fixed:
            return None
        measured_steps = step - self._first[0]
        measured_seconds = elapsed - self._first[1]
        if measured_steps <= 0 or measured_seconds <= 0:
            return None  # nothing measurable yet (a coarse clock): wait for more loops
        if self.plan is None:
            if self._loops < 1 + self.measure_loops:
                return None
            self.plan = self._estimate(step, elapsed, measured_steps, measured_seconds, False)
            self._check_room(step, elapsed)
            return self.plan
        if measured_seconds >= self.reestimate_fraction * self.budget_seconds:
            self.plan = self._estimate(step, elapsed, measured_steps, measured_seconds, True)
            return self.plan
        if step >= self.plan.planned_steps:  # the run ends on its first estimate
            self.plan = dataclasses.replace(self.plan, fixed=True)
            return self.plan
        return None

    def _estimate(self, step, elapsed, measured_steps, measured_seconds, fixed) -> BudgetPlan:
        seconds_per_step = measured_seconds / measured_steps
        remaining = self.budget_seconds - elapsed
        planned = step + max(0, math.floor(remaining / seconds_per_step))
        return BudgetPlan(
            budget_minutes=self.budget_minutes,
            planned_steps=planned,
            warmup_steps=self.warmup.steps_for(planned),
            seconds_per_step=seconds_per_step,
            measured_steps=measured_steps,
            planned_at_step=step,
            planned_at_seconds=elapsed,
            fixed=fixed,
        )

    def _check_room(self, step: int, elapsed: float) -> None:
        """Refuse a budget with no room for one more loop after the timed ones."""
        plan = self.plan
        if plan.planned_steps - step >= self.steps_per_loop:
            return
        loop_seconds = self.steps_per_loop * plan.seconds_per_step
        minimum = math.ceil((elapsed + loop_seconds) / 60 * 100) / 100
        first_step, first_elapsed = self._first
        raise BudgetTooShortError(
            f"--train_minutes={self.budget_minutes:g} is too short: training took "
            f"{elapsed:.1f} s up to step {step} (the first loop, which traces the training "
            f"function, ended at {first_elapsed:.1f} s at step {first_step}), and a step takes "
            f"{plan.seconds_per_step:.3g} s, which leaves no room for another loop of "
            f"{self.steps_per_loop} steps (--steps_per_loop). The shortest budget that trains "
            f"one more loop is --train_minutes={minimum:g}; a useful model needs far more."
        )
