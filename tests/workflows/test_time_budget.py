"""--train_minutes end to end on tiny runs, timed by a fake clock that moves only when a training
loop runs (no timed tests, no sleeps): the plan, the schedule ending at its last planned step,
config.json's record, the resume that keeps it, the results line and the usage errors."""

import functools
import json
import logging
import math

import pytest
import tensorflow as tf
from helpers.cli import config_from_argv
from helpers.configs import tiny_config
from helpers.interrupted import run_until_saved
from helpers.numpy_refs import warmup_cosine

from tf_simclr.choices import ConfigError
from tf_simclr.config import Config
from tf_simclr.training.budget import BudgetTooShortError
from tf_simclr.workflows import report, runner, train

REAL_TRAIN = train.train
REAL_RUN_STEPS = train._run_steps
BUDGET_MINUTES = 0.45  # 27 s of (fake) training time
TRACING_SECONDS = 20.0  # the first loop of a process


class LoopClock:
    """Fake seconds that move only when a training loop runs: TRACING_SECONDS for the first
    loop of a process, then seconds_per_step(loop index) for each step of a loop."""

    def __init__(self, seconds_per_step) -> None:
        self.now = 1000.0
        self.loops = 0
        self.seconds_per_step = seconds_per_step

    def __call__(self) -> float:
        return self.now

    def loop_ran(self, num_steps: int) -> None:
        first = self.loops == 0
        self.now += TRACING_SECONDS if first else self.seconds_per_step(self.loops) * num_steps
        self.loops += 1


def _fake_time(monkeypatch, seconds_per_step) -> LoopClock:
    """Training (also through runner.run) timed by a new LoopClock."""
    clock = LoopClock(seconds_per_step)

    def run_steps(run, train_loop, iterator, num_steps, last_finite):
        means = REAL_RUN_STEPS(run, train_loop, iterator, num_steps, last_finite)
        clock.loop_ran(num_steps)
        return means

    monkeypatch.setattr(train, "_run_steps", run_steps)
    monkeypatch.setattr(train, "train", functools.partial(REAL_TRAIN, clock=clock))
    return clock


def _slowing(loop: int) -> float:
    """0.5 s/step for the two loops after the first, then 1 s/step."""
    return 0.5 if loop <= 2 else 1.0


def _budget_config(model_dir, **changes):
    # 0.1 epochs of the embedded set's 5,000 images in batches of 32: a 16-step warmup, which
    # the plan caps at 1/6 of its steps.
    values = dict(
        mode="train",
        train_steps=0,
        train_minutes=BUDGET_MINUTES,
        warmup_epochs=0.1,
        keep_checkpoint_max=10,
    )
    return tiny_config(model_dir, **{**values, **changes})


def _history(model_dir):
    return train.read_history(str(model_dir))


def test_the_budget_is_planned_from_the_measured_speed_and_the_schedule_ends_there(
    tmp_path, monkeypatch, caplog
):
    _fake_time(monkeypatch, _slowing)
    config = _budget_config(tmp_path)
    assert config.train_epochs is None  # not given: the budget sets the length
    with caplog.at_level(logging.INFO):
        result = runner.run(config)
    # Loops of 2 steps end at 20 s (tracing), 21, 22 (first estimate: 0.5 s/step), 24
    # (re-estimate over the 6 steps after the first loop, 4 s: fixed), 26 and 28 s.
    budget = 60 * BUDGET_MINUTES
    first = 6 + math.floor((budget - 22) / ((22 - 20) / (6 - 2)))
    planned = 8 + math.floor((budget - 24) / ((24 - 20) / (8 - 2)))
    assert (first, planned) == (16, 12)
    warmup = min(16, planned // 6)  # --warmup_epochs=0.1 is 16 steps, capped at 1/6
    records = _history(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    assert [r["train_seconds"] for r in records] == [20, 21, 22, 24, 26, 28]
    base = 4.0 * 32 / 256  # the pretraining default rate, linear scaling, batch 32
    expected_rates = [
        warmup_cosine(2, base, 16, 2**62),  # before the plan: the --warmup_epochs warmup
        warmup_cosine(4, base, 16, 2**62),
        warmup_cosine(6, base, 16, 2**62),
        warmup_cosine(8, base, min(16, first // 6), first),  # on the first estimate
        warmup_cosine(10, base, warmup, planned),  # on the fixed plan
        warmup_cosine(12, base, warmup, planned),  # its end: the final value, 0
    ]
    rates = [r["learning_rate"] for r in records]
    assert rates == pytest.approx(expected_rates, rel=1e-6, abs=1e-7)
    assert rates[-1] == pytest.approx(0.0, abs=1e-7)

    saved = Config.load(str(tmp_path))
    assert saved.budget_plan == {
        "budget_minutes": BUDGET_MINUTES,
        "planned_steps": planned,
        "warmup_steps": warmup,
        "seconds_per_step": pytest.approx(4 / 6),
        "measured_steps": 6,
        "planned_at_step": 8,
        "planned_at_seconds": 24.0,
        "fixed": True,
    }
    assert saved.train_epochs is None and Config.from_json(saved.to_json()) == saved
    reader = tf.train.load_checkpoint(str(tmp_path / f"ckpt-{planned}"))
    iterations = [k for k in reader.get_variable_to_shape_map() if "iteration" in k][0]
    assert int(reader.get_tensor(iterations)) == planned

    assert (result["step"], result["total_steps"]) == (planned, planned)
    assert result["budget"]["train_seconds"] == 28.0
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["budget"]["planned_steps"] == planned
    table = report.format_report(result, config)
    assert "Step 12 of 12" in table
    # The log shows both plans, and the progress lines the plan they follow.
    assert "Time budget 0.45 min: 16 steps planned at 0.5 s/step (measured over 4 steps" in (
        caplog.text
    )
    assert "re-estimated: 12 steps planned at 0.667 s/step (measured over 6 steps" in caplog.text
    assert "The plan is fixed: warmup 2 steps, then cosine decay to 0 at step 12." in caplog.text
    assert "step 12/12 " in caplog.text and "(budget 0.45 min: 12 steps)" in caplog.text
    assert "Training time 0.47 min of a 0.45 min budget, 12 steps (planned at 0.667 s/step" in table


def test_a_resumed_run_keeps_the_recorded_plan(tmp_path, monkeypatch):
    _fake_time(monkeypatch, _slowing)
    config = _budget_config(tmp_path)
    run_until_saved(monkeypatch, config, 10)  # dies after checkpoint 10, the plan fixed at 8
    recorded = Config.load(str(tmp_path)).budget_plan
    assert recorded["planned_steps"] == 12 and recorded["fixed"]
    assert config_from_argv(f"--model_dir={tmp_path}").budget_plan == recorded  # the command line
    # Rerun at ten times the speed: planning again would give far more steps; it does not.
    _fake_time(monkeypatch, lambda loop: 0.1)
    result = runner.run(config)
    assert result["step"] == 12 and result["budget"]["planned_steps"] == 12
    assert Config.load(str(tmp_path)).budget_plan == recorded
    records = _history(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    # The training time continues from the record at the checkpoint (26 s), plus the rerun's
    # first loop, which traces again.
    assert records[-1]["train_seconds"] == 26 + TRACING_SECONDS
    assert records[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-7)
    # Resuming with another budget is refused: it would change the schedule half-way.
    with pytest.raises(ConfigError, match="planned 12 steps for a 0.45-minute budget"):
        runner.run(config.replace(train_minutes=1.0))
    with pytest.raises(ConfigError, match="drop --train_minutes to resume that plan"):
        config_from_argv("--train_minutes=1", f"--model_dir={tmp_path}")


def test_a_run_stopped_before_its_plan_was_fixed_plans_counting_its_recorded_time(
    tmp_path, monkeypatch
):
    _fake_time(monkeypatch, _slowing)
    config = _budget_config(tmp_path, train_minutes=0.8)  # 48 s
    run_until_saved(monkeypatch, config, 4)  # 21 s of training, no plan yet
    assert Config.load(str(tmp_path)).budget_plan is None
    _fake_time(monkeypatch, _slowing)  # the rerun traces again: 41 s at step 6, 42, 43, 45
    runner.run(config)
    first = 10 + math.floor((48 - 43) / ((43 - 41) / (10 - 6)))
    planned = 12 + math.floor((48 - 45) / ((45 - 41) / (12 - 6)))
    plan = Config.load(str(tmp_path)).budget_plan
    assert (plan["planned_steps"], plan["planned_at_step"]) == (planned, 12)
    # (A 48 s budget, not 60: the same two estimates, 16 steps to train instead of 34.)
    assert (first, planned) == (20, 16)
    records = _history(tmp_path)
    assert [r["step"] for r in records] == list(range(2, planned + 1, 2))
    assert records[1]["train_seconds"] == 21 and records[2]["train_seconds"] == 41
    assert records[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-7)


def test_a_budget_too_short_for_the_measured_speed_is_refused_with_the_minimum(
    tmp_path, monkeypatch
):
    clock = _fake_time(monkeypatch, _slowing)
    config = _budget_config(tmp_path, train_minutes=0.3)  # 18 s: tracing alone takes 20
    with pytest.raises(BudgetTooShortError) as err:
        train.train(config, tf.distribute.get_strategy(), clock=clock)
    # 22 s up to step 6, then one loop of 2 steps at 0.5 s: 23 s = 0.3833 min, rounded up.
    assert "--train_minutes=0.3 is too short" in str(err.value)
    assert "--train_minutes=0.39" in str(err.value)
    saved = Config.load(str(tmp_path))  # what was written is whole: no plan recorded
    assert saved.budget_plan is None and saved.train_minutes == 0.3


def test_checkpoints_every_few_minutes_of_training_time(tmp_path, monkeypatch):
    _fake_time(monkeypatch, lambda loop: 1.0)
    # 2 s loops after a 20 s first loop; a checkpoint after each 5 s of training time.
    config = tiny_config(
        tmp_path, mode="train", train_steps=12, checkpoint_steps=0, checkpoint_minutes=5 / 60
    )
    runner.run(config)
    ends = {r["step"]: r["train_seconds"] for r in _history(tmp_path)}
    assert ends == {2: 20, 4: 22, 6: 24, 8: 26, 10: 28, 12: 30}
    saved = sorted(int(p.name[5:-6]) for p in tmp_path.glob("ckpt-*.index"))
    # 20 s (passes 5, 10, 15, 20), 26 s (25) and 30 s (30), the last also the end.
    assert saved == [2, 8, 12]


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(train_minutes=0.0), "--train_minutes must be a positive number of minutes, got 0"),
        (dict(train_minutes=-5.0), "--train_minutes must be a positive number of minutes"),
        (dict(train_minutes=float("nan")), "--train_minutes must be a positive number"),
        (dict(train_minutes=10.0, train_epochs=5), "--train_minutes=10 and --train_epochs=5"),
        (dict(train_minutes=10.0, train_steps=100), "--train_minutes=10 and --train_steps=100"),
        (
            dict(train_minutes=10.0, mode="semi_supervised", label_fraction=0.1),
            "--train_minutes does not apply to --mode=semi_supervised",
        ),
        (dict(train_minutes=10.0, strategy="multi_worker"), "--strategy=multi_worker"),
        (
            dict(budget_plan={"budget_minutes": 10.0, "planned_steps": 5}),
            "no --train_minutes is set",
        ),
        (dict(checkpoint_minutes=-1.0), "--checkpoint_minutes must be >= 0"),
    ],
)
def test_bad_budgets_are_usage_errors(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config(**values)


def test_a_mode_default_length_is_not_taken_for_a_given_one(tmp_path):
    """Each mode fills in its --train_epochs where none was given; with --train_minutes it
    fills in none, and only an --train_epochs on the command line is refused."""
    for mode in (
        [],
        ["--train_mode=finetune", "--checkpoint=/nowhere"],
        ["--train_mode=distill", "--teacher=/nowhere"],
    ):
        config = config_from_argv(*mode, "--train_minutes=10", f"--model_dir={tmp_path / 'a'}")
        assert config.train_minutes == 10 and config.train_epochs is None
        assert "learning_rate" in config.mode_defaulted  # the rate's default still applies
    with pytest.raises(ConfigError, match="--train_minutes=10 and --train_epochs=12"):
        config_from_argv("--train_minutes=10", "--train_epochs=12", f"--model_dir={tmp_path}")
    # A model_dir whose run trained for epochs keeps them: the message says to start anew.
    Config(model_dir=str(tmp_path / "epochs")).save()
    with pytest.raises(ConfigError, match="use a new --model_dir for a time budget"):
        config_from_argv("--train_minutes=10", f"--model_dir={tmp_path / 'epochs'}")


def test_the_budget_is_part_of_the_hash_only_when_set():
    assert Config().hash() == "760fa6ce03f7"  # unchanged for runs without a budget
    assert Config(train_minutes=10.0).hash() != Config(train_minutes=20.0).hash()
    assert Config(checkpoint_minutes=5.0).hash() == Config().hash()  # not a model setting


def test_a_weak_fine_tuned_network_under_a_budget_is_told_to_take_a_larger_budget():
    config = Config(train_mode="finetune", checkpoint="/pre", train_minutes=5.0)
    (warning,) = report.weak_result_warnings(
        {"finetune_top1": 0.1}, config, num_classes=10, total_steps=40
    )
    assert "a schedule too short for the labelled images (--train_minutes=5 = 40 steps)" in warning
    assert "a larger --train_minutes" in warning and "--train_epochs" not in warning
