"""Log capture for module-scoped fixtures (pytest's caplog is per test)."""

from __future__ import annotations

import contextlib
import logging


class _Collected(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def log_messages(logger_name: str | None = None):
    """Yields a list that collects the INFO-and-above messages of `logger_name` (the root
    logger by default) while the block runs; the logger's level is restored afterwards."""
    messages: list[str] = []
    logger = logging.getLogger(logger_name)
    handler, level = _Collected(messages), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
