"""What `kiln tune` shows while it runs: a table redrawn in place on a terminal, one log line per batch otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .state import TuneSummary

MAX_ROWS = 12  # kernels shown in the live table (the heaviest); the rest are summed up in one line


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.3f} ms"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def headline(summary: TuneSummary, minutes: float | None, started: float) -> str:
    """One line: kernels, trials done / total, model time of the searched kernels, elapsed and left."""
    searched = summary.searched
    done = sum(min(t.trials, t.budget) for t in searched)
    total = sum(t.budget for t in searched)
    elapsed = time.monotonic() - started
    left = []
    if summary.trials_run and done < total < 10 ** 8:
        left.append(summary.seconds / summary.trials_run * (total - done))
    if minutes:
        left.append(max(0.0, minutes * 60 - elapsed))
    trials = f"{done}/{total}" if total < 10 ** 8 else f"{done}"
    default, tuned = summary.model_ms("default_us"), summary.model_ms("best_us")
    model = f", searched kernels {default:.2f} -> {tuned:.2f} ms" if default and tuned else ""
    remaining = f", ~{_duration(min(left))} left" if left else ""
    return (f"{len(searched)} kernel(s) searched, trials {trials}{model}, {_duration(elapsed)} elapsed"
            f"{remaining}")


def table(summary: TuneSummary) -> list[str]:
    """Rows for the heaviest searched kernels: trials, Kiln's default time, best so far, speed-up."""
    rows = [f"  {'kernel':40} {'trials':>9} {'default':>11} {'best':>11} {'gain':>6}"]
    heavy = sorted(summary.searched, key=lambda t: -t.work)
    for task in heavy[:MAX_ROWS]:
        gain = f"{task.default_us / task.best_us:.2f}x" if task.default_us and task.best_us else "-"
        trials = f"{min(task.trials, task.budget)}/{task.budget}" if task.budget < 10 ** 8 else str(task.trials)
        rows.append(f"  {task.name[:40]:40} {trials:>9} {_ms(task.default_us):>11} {_ms(task.best_us):>11} "
                    f"{gain:>6}")
    if len(heavy) > MAX_ROWS:
        rows.append(f"  ... and {len(heavy) - MAX_ROWS} lighter kernel(s)")
    return rows


class TuneDisplay:
    """REPORT callback for tune(): live table on a terminal, plain timestamped lines otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, minutes: float | None = None, live: bool | None = None):
        self.stream = stream
        self.minutes = minutes
        self.live = stream.isatty() if live is None else live
        self.started = time.monotonic()
        self.drawn = 0  # lines of the live table on screen

    def __call__(self, summary: TuneSummary, message: str) -> None:
        if message:
            self._line(message)
        elif self.live:
            self._redraw([headline(summary, self.minutes, self.started), *table(summary)])
        else:
            self._line(headline(summary, self.minutes, self.started))

    def _line(self, text: str) -> None:
        if self.live:
            self._redraw([])
            self.stream.write(f"  {text}\n")
        else:
            self.stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()

    def _redraw(self, lines: list[str]) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the table's first line, clear below
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)
