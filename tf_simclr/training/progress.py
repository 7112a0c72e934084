"""Training progress: a tqdm bar on an interactive terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """A progress bar on an interactive terminal, periodic log lines otherwise."""

    def __init__(
        self, total: int, initial: int, every: int, images_per_step: int, unit: str = "step"
    ) -> None:
        """`unit` names what is counted (training steps; batches for --mode=embed)."""
        self.total = total
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
        if step - self.last_logged >= self.every or step >= self.total:
            self.last_logged = step
            remaining = (self.total - step) * self.images_per_step / max(rate, 1e-9)
            hidden = ("learning_rate", "images_per_second")
            shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in hidden)
            if "learning_rate" in metrics:
                shown += f" lr={metrics['learning_rate']:.4g}"
            log.info(
                "%s %d/%d %s%.0f img/s ETA %s",
                self.unit,
                step,
                self.total,
                f"{shown.strip()} " if shown.strip() else "",
                rate,
                format_seconds(remaining),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
