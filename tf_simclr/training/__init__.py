"""Training machinery usable without a Config: optimisers and schedules, checkpoints, distribution, precision, progress, curves, interrupts."""
