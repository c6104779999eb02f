"""How a tune ends early: the time budget or Ctrl-C, checked after each measured batch."""

from __future__ import annotations

import logging
import signal
import threading
import time

from runtime import signals

log = logging.getLogger(__name__)


class Stop(Exception):
    """Raised from the measure callback to end the search after a batch (time is up, or Ctrl-C). It reaches the
    caller as a TVM error (it crosses MetaSchedule's C++ loop), so the reason is kept in StopSignal."""


class StopSignal:
    """Why the search should stop after the current batch, if it should: 'time' or 'interrupted'. The first
    Ctrl-C asks for a stop after the batch in flight (its results are kept); a second one stops at once."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.reason: str | None = None
        self.mask: set | None = None

    def check(self) -> None:
        if self.mask is not None:  # a library may have blocked it since; a pending Ctrl-C is handled right here
            signals.unblock((signal.SIGINT,))
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "time"
        if self.reason:
            raise Stop(self.reason)

    def __enter__(self):
        def first_interrupt(_signum, _frame):
            self.reason = "interrupted"
            log.warning("stopping after the batch in flight (Ctrl-C again to stop at once)")
            signal.signal(signal.SIGINT, signal.default_int_handler)

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, first_interrupt)
            self.mask = signals.unblock((signal.SIGINT,))
        return self

    def __exit__(self, *_exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            signals.restore(self.mask)
