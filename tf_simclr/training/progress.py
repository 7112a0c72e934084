"""Training progress: a tqdm bar on an interactive terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """A progress bar on an interactive terminal, periodic log lines otherwise."""

    def __init__(
        self,
        total: int | None,
        initial: int,
        every: int,
        images_per_step: int,
        unit: str = "step",
    ) -> None:
        """`unit` names what is counted (training steps; batches for --mode=embed); `total`
        None: not known yet (a time budget before its steps are planned: `set_plan`)."""
        self.total = total
        self.plan = ""  # what the total stands for, e.g. "budget 10.0 min: 1,234 steps"
        self.unit = unit
        self.every = every
        self.images_per_step = images_per_step
        self.last_logged = initial
        self.start_step = initial
        self.start_time = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def set_plan(self, total: int | None, plan: str) -> None:
        """A new `total` (None: not known yet) and the `plan` it comes from, shown in the bar's
        description and the log lines."""
        self.total = total
        self.plan = plan
        if self.bar is not None:
            self.bar.total = total
            self.bar.set_description(plan)
            self.bar.refresh()

    def images_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (step - self.start_step) * self.images_per_step / max(elapsed, 1e-9)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        rate = self.images_per_second(step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            shown = {"loss": f"{metrics['loss']:.4f}"} if "loss" in metrics else {}
            self.bar.set_postfix(**shown, img_s=f"{rate:.0f}")
            return
        if step - self.last_logged >= self.every or (self.total and step >= self.total):
            self.last_logged = step
            hidden = ("learning_rate", "images_per_second")
            shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in hidden)
            if "learning_rate" in metrics:
                shown += f" lr={metrics['learning_rate']:.4g}"
            if self.total is None:
                of, eta = "", ""
            else:
                remaining = (self.total - step) * self.images_per_step / max(rate, 1e-9)
                of, eta = f"/{self.total}", f" ETA {format_seconds(remaining)}"
            log.info(
                "%s %d%s %s%.0f img/s%s%s",
                self.unit,
                step,
                of,
                f"{shown.strip()} " if shown.strip() else "",
                rate,
                eta,
                f" ({self.plan})" if self.plan else "",
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
