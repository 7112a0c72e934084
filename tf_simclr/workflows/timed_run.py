"""--train_minutes in the training loop: the budget planner (tf_simclr.training.budget) asked
after every loop, its plan applied to the learning-rate schedules, the loop's bound and the
progress display, and the fixed plan recorded in config.json (budget_plan), which a resumed run
keeps instead of planning again."""

from __future__ import annotations

import logging
import os

from tf_simclr.config import CONFIG_FILENAME, Config
from tf_simclr.training import budget as budget_lib
from tf_simclr.workflows import storage

log = logging.getLogger(__name__)


class TimedRun:
    """Plans a budget run's steps while it trains (made by `start`)."""

    def __init__(self, run, planner: budget_lib.BudgetPlanner, progress) -> None:
        self.run = run  # tf_simclr.workflows.train.AssembledRun
        self.planner = planner
        self.progress = progress

    def after_loop(self, step: int, elapsed: float) -> None:
        """Ask the planner after a loop that ended at `step` with `elapsed` seconds of
        training; apply a new plan (BudgetTooShortError when the budget has no room)."""
        plan = self.planner.after_loop(step, elapsed)
        if plan is None:
            return
        self.run.schedule_steps.assign(plan.warmup_steps, plan.planned_steps)
        self.run.plan.total_steps = plan.planned_steps
        self.progress.set_plan(plan.planned_steps, plan.short())
        log.info("%s", plan.describe())
        if plan.fixed:
            config = self.run.plan.config.replace(budget_plan=plan.to_record())
            self.run.plan.config = config
            if self.run.plan.role.chief:
                storage.save_config(config, config.model_dir, None)


def with_recorded_plan(config: Config) -> Config:
    """A --train_minutes `config` with the plan its model_dir's config.json records, which a
    resumed run keeps (the command line's settings.resolve takes it over too); ConfigError
    when that plan is for another budget."""
    if config.train_minutes is None or config.budget_plan:
        return config
    if not os.path.isfile(os.path.join(config.model_dir, CONFIG_FILENAME)):
        return config
    recorded = Config.load(config.model_dir).budget_plan
    return config.replace(budget_plan=recorded) if recorded else config


def start(run, step: int, progress) -> TimedRun | None:
    """The planner of a --train_minutes run that starts (or resumes, unplanned) at `step`;
    None without a budget or when config.json records the plan (shown, and kept)."""
    config = run.plan.config
    if config.train_minutes is None:
        return None
    if config.budget_plan:
        plan = budget_lib.BudgetPlan.from_record(config.budget_plan)
        log.info("Resuming at step %d on the recorded plan. %s", step, plan.describe())
        progress.set_plan(plan.planned_steps, plan.short())
        return None
    warmup = budget_lib.WarmupRule(config.warmup_steps_for(run.plan.num_train))
    planner = budget_lib.BudgetPlanner(config.train_minutes, config.steps_per_loop, warmup)
    log.info(
        "Training %s for a %s min budget (batch %d, %d examples): the steps that fit are "
        "planned from the speed of the %d loops after the first (which traces the training "
        "function), and planned again once %.0f%% of the budget is measured. Until then the "
        "learning rate warms up over %d steps (--warmup_epochs).",
        config.train_mode,
        budget_lib.format_minutes(config.train_minutes),
        config.train_batch_size,
        run.plan.num_train,
        planner.measure_loops,
        100 * planner.reestimate_fraction,
        warmup.epoch_steps,
    )
    minutes = budget_lib.format_minutes(config.train_minutes)
    progress.set_plan(None, f"budget {minutes} min: timing the first loops")
    return TimedRun(run, planner, progress)


def training_seconds(history: list[dict]) -> float | None:
    """The training time the last record of `history` holds (None: none recorded)."""
    return history[-1].get("train_seconds") if history else None


def summary(config: Config, history: list[dict]) -> dict | None:
    """A budget run's plan with its training time ("train_seconds"), for result.json and the
    results table; None without a recorded plan."""
    if config.train_minutes is None or not config.budget_plan:
        return None
    return {**config.budget_plan, "train_seconds": training_seconds(history)}
