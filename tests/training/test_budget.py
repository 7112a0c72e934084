"""The time-budget planner (tf_simclr.training.budget) driven by a fake clock, and the schedule
whose steps it sets while training (optim.PlannedWarmupCosineDecay): no timed tests, no sleeps."""

import math

import numpy as np
import pytest
from helpers.numpy_refs import warmup_cosine

from tf_simclr.training.budget import (
    UNPLANNED_STEPS,
    BudgetPlan,
    BudgetPlanner,
    BudgetTooShortError,
    TrainingClock,
    WarmupRule,
    describe_result,
)


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _train(planner, timer, clock, loops, steps_per_loop=10, start_step=0):
    """Run `loops` (seconds each) through the planner; the plans it returned, by step."""
    plans, step = {}, start_step
    for seconds in loops:
        clock.now += seconds
        step += steps_per_loop
        plan = planner.after_loop(step, timer.elapsed())
        if plan is not None:
            plans[step] = plan
    return plans


def test_the_first_estimate_and_the_re_estimate_plan_what_fits_then_the_plan_is_fixed():
    clock = FakeClock()
    timer = TrainingClock(clock=clock)
    budget_minutes = 2.0  # 120 s
    planner = BudgetPlanner(budget_minutes, 10, WarmupRule(epoch_steps=50))
    # The first loop traces (20 s), two loops at 0.5 s/step, then the speed drops to 1 s/step.
    plans = _train(planner, timer, clock, [20, 5, 5, 10, 10, 10, 1, 1])
    assert sorted(plans) == [30, 40]  # the first estimate, then the re-estimate, no more
    first, fixed = plans[30], plans[40]
    # Planned steps = steps done + floor(remaining budget / seconds per step measured after the
    # first loop): at step 30, 10 s over 20 steps; at step 40, 20 s over 30 steps.
    assert first.seconds_per_step == 0.5 and first.measured_steps == 20
    assert first.planned_steps == 30 + math.floor((120 - 30) / (10 / 20)) == 210
    assert not first.fixed
    assert fixed.fixed and fixed.measured_steps == 30
    assert fixed.seconds_per_step == pytest.approx(20 / 30)
    assert fixed.planned_steps == 40 + math.floor((120 - 40) / (20 / 30)) == 160
    # Warmup: --warmup_epochs in steps (50), at most 1/6 of the planned steps.
    assert first.warmup_steps == min(50, 210 // 6) == 35
    assert fixed.warmup_steps == min(50, 160 // 6) == 26
    assert planner.plan == fixed
    assert (fixed.planned_at_step, fixed.planned_at_seconds) == (40, 40.0)


def test_the_re_estimate_waits_for_its_share_of_the_budget():
    clock = FakeClock()
    timer = TrainingClock(clock=clock)
    planner = BudgetPlanner(10.0, 10, WarmupRule(0))  # 600 s: re-estimated after 30 s measured
    plans = _train(planner, timer, clock, [20, 4, 4] + [4] * 6 + [4])
    # Measured after the first loop: 8 s at the first estimate, 32 s after the 8th loop.
    assert sorted(plans) == [30, 90]
    assert plans[90].planned_steps == 90 + math.floor((600 - 52) / (32 / 80))
    assert plans[90].warmup_steps == 0


def test_a_budget_without_room_for_another_loop_is_refused_with_the_minimum():
    clock = FakeClock()
    timer = TrainingClock(clock=clock)
    planner = BudgetPlanner(0.4, 10, WarmupRule(5))  # 24 s: the first loops alone take 30 s
    with pytest.raises(BudgetTooShortError) as err:
        _train(planner, timer, clock, [20, 5, 5])
    message = str(err.value)
    assert "--train_minutes=0.4 is too short" in message
    assert "a step takes 0.5 s" in message
    # 30 s so far and one more loop of 10 steps at 0.5 s: 35 s = 0.5833 min, rounded up.
    assert "--train_minutes=0.59" in message
    # Room for exactly one more loop is enough.
    clock, ok = FakeClock(), BudgetPlanner(35 / 60, 10, WarmupRule(5))
    plans = _train(ok, TrainingClock(clock=clock), clock, [20, 5, 5])
    assert plans[30].planned_steps == 40


def test_a_run_that_ends_on_its_first_estimate_fixes_it():
    clock = FakeClock()
    timer = TrainingClock(clock=clock)
    planner = BudgetPlanner(100.0, 10, WarmupRule(0), reestimate_fraction=0.9)
    planner.after_loop(10, 0.0)
    planner.after_loop(20, 10.0)
    planned = planner.after_loop(30, 20.0)
    assert not planned.fixed
    end = planner.after_loop(planned.planned_steps, 25.0)  # the planned end, re-estimate not due
    assert end.fixed and end.planned_steps == planned.planned_steps
    assert planner.after_loop(planned.planned_steps + 10, 30.0) is None
    assert timer.elapsed() == 0.0


def test_a_resumed_clock_continues_the_recorded_training_time_and_times_checkpoints():
    clock = FakeClock()
    timer = TrainingClock(offset=250.0, clock=clock, checkpoint_seconds=100.0)
    clock.now += 40.0
    assert timer.elapsed() == 290.0
    assert not timer.checkpoint_due(290.0)  # 200 s was passed before the resume
    assert timer.checkpoint_due(301.0)
    assert not timer.checkpoint_due(350.0)  # once per multiple
    assert timer.checkpoint_due(520.0)  # 400 and 500 passed in one loop: one checkpoint
    assert not timer.checkpoint_due(599.0)
    assert not TrainingClock(clock=clock).checkpoint_due(1e9)  # off


def test_the_plan_round_trips_and_reads_as_the_results_line():
    plan = BudgetPlan(10.0, 1234, 205, 0.45, 40, 60, 31.5, True)
    assert BudgetPlan.from_record(plan.to_record()) == plan
    assert plan.short() == "budget 10.0 min: 1,234 steps"
    assert "1,234 steps planned at 0.45 s/step (measured over 40 steps" in plan.describe()
    line = describe_result({**plan.to_record(), "train_seconds": 588.0})
    assert line.startswith("Training time 9.8 min of a 10.0 min budget, 1,234 steps")
    assert WarmupRule(100).steps_for(60) == 10 and WarmupRule(3).steps_for(60) == 3


def test_the_planned_schedule_follows_its_steps_inside_a_traced_function():
    import keras
    import tensorflow as tf

    from tf_simclr.training.optim import (
        PlannedWarmupCosineDecay,
        ScheduleSteps,
        WarmupCosineDecay,
    )

    base = 0.8
    steps = ScheduleSteps(12, UNPLANNED_STEPS)
    schedule = PlannedWarmupCosineDecay(base, steps)
    rate = tf.function(lambda step: schedule(step))
    # Before the plan: the warmup, then the base rate (no decay yet).
    assert float(rate(tf.constant(0, tf.int64))) == 0.0
    assert float(rate(tf.constant(6, tf.int64))) == pytest.approx(base / 2)
    assert float(rate(tf.constant(5000, tf.int64))) == pytest.approx(base)
    traces = rate.experimental_get_tracing_count()
    steps.assign(26, 160)
    values = [float(rate(tf.constant(s, tf.int64))) for s in range(166)]
    assert rate.experimental_get_tracing_count() == traces  # the same graph reads the plan
    # The same values as the schedule built for those steps, within float32 of the formula,
    # and the final value (0) at the planned last step.
    fixed = WarmupCosineDecay(base, 26, 160)
    ulps = 2 * np.spacing(np.float32(base))
    fixed_values = [float(fixed(tf.constant(s, tf.int64))) for s in range(166)]
    np.testing.assert_allclose(values, fixed_values, rtol=0, atol=ulps)
    expected = [warmup_cosine(s, base, 26, 160) for s in range(166)]
    np.testing.assert_allclose(values, expected, rtol=0, atol=ulps)
    assert values[160] == pytest.approx(0.0, abs=1e-7) and values[159] > 1e-5
    steps.assign(4, 4)  # no decay: 0 after the warmup, as WarmupCosineDecay
    after = [float(rate(tf.constant(s, tf.int64))) for s in (2, 4, 9)]
    assert after == pytest.approx([base / 2, 0.0, 0.0])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert (
        clone.get_config()
        == schedule.get_config()
        == fixed.get_config()
        | {
            "warmup_steps": 4,
            "total_steps": 4,
        }
    )
    with pytest.raises(ValueError, match="total_steps"):
        steps.assign(10, 5)
