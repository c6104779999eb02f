"""Stop signals made deliverable. A signal mask is inherited through fork and exec, so a process started by a
parent (a test runner's worker, a supervisor) that had SIGINT blocked in its thread never sees Ctrl-C: the signal
stays pending and the handler never runs (what CI once saw: a `kiln tune` ran its whole budget after Ctrl-C)."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def unblock(signals=STOP_SIGNALS) -> set[signal.Signals]:
    """Unblock SIGNALS in the calling thread (threads started later inherit it); the mask it had before."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        return set()
    return signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def restore(mask: set[signal.Signals]) -> None:
    """Put back the calling thread's MASK, as unblock() returned it."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
