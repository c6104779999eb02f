"""What a tune knows about its kernels: each kernel's trials, budget and times (TaskState), the run as a whole
(TuneSummary, also `kiln tune --json`), and how the trials are shared out (allocate)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

LIGHT_SHARE = 0.005  # kernels below this share of the model's work are not searched
MIN_TASK_TRIALS = 16  # a searched kernel gets at least this many trials (when the budget allows)


@dataclass
class TaskState:
    """One kernel being tuned. trials counts searched candidates over every run; times are in microseconds."""

    key: str
    name: str
    weight: int
    mflop: float
    budget: int = 0
    trials: int = 0
    default_us: float | None = None
    best_us: float | None = None
    fixed: bool = False  # Kiln's schedule of it has nothing to tune (no tile sizes): it is never searched
    cache: str | None = None  # how its records were timed, 'cold' or 'warm' (measure.EVALUATORS); None: not yet

    @property
    def work(self) -> float:
        return 0.0 if self.fixed else self.weight * self.mflop

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.trials)


@dataclass
class TuneSummary:
    """What a tune did: per-kernel state, trials measured in this run, why it stopped."""

    model: str
    target: str
    database: str
    tasks: list[TaskState]
    trials_run: int = 0
    seconds: float = 0.0
    stopped: str = "budget"  # budget | time | interrupted | nothing to do | rechecked
    records: int = 0
    kept: int = 0
    curve: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, trials, searched-kernels ms)

    def model_ms(self, attr: str) -> float | None:
        """Sum over the searched kernels of weight x time (ATTR: 'best_us' or 'default_us'), in ms."""
        times = [(t.weight, getattr(t, attr)) for t in self.searched]
        if not times or any(v is None for _w, v in times):
            return None
        return sum(w * v for w, v in times) / 1000

    @property
    def searched(self) -> list[TaskState]:
        return [t for t in self.tasks if t.budget > 0]

    def to_json(self) -> dict:
        return {"model": self.model, "target": self.target, "database": self.database,
                "trials_run": self.trials_run, "seconds": round(self.seconds, 1), "stopped": self.stopped,
                "records_kept": self.kept, "records_before_pruning": self.records,
                "kernels_searched": len(self.searched), "kernels": len(self.tasks),
                "searched_kernels_ms": {"default": self.model_ms("default_us"), "tuned": self.model_ms("best_us")},
                "curve": [{"seconds": round(s, 1), "trials": n, "searched_kernels_ms": round(ms_, 4)}
                          for s, n, ms_ in self.curve],
                "tasks": [asdict(t) for t in self.tasks]}


def allocate(tasks: list[TaskState], trials: int) -> None:
    """Give each kernel its share of TRIALS by weight x FLOPs; kernels under LIGHT_SHARE of the work, and fixed
    ones, get none."""
    total = sum(t.work for t in tasks) or 1.0
    heavy = [t for t in tasks if t.work >= LIGHT_SHARE * total]
    heavy_work = sum(t.work for t in heavy) or 1.0
    floor = min(MIN_TASK_TRIALS, max(1, trials // max(1, len(heavy))))
    for task in tasks:
        task.budget = max(floor, round(trials * task.work / heavy_work)) if task in heavy else 0
