"""tune(): the `kiln tune` entry point. Checks the target and budget, imports the model with fixed shapes, runs
the graph stages `kiln compile` runs (so the kernels match), and hands the kernels to the Tuner
(compiler/tuning/search.py) under the database's writer lock; prunes the records afterwards."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

from runtime.errors import KilnError
from runtime.tvm_runtime import usable_cpus

from .. import frontend
from ..pipeline import optimize_graph
from ..targets import get_target
from . import database as tuning
from .measure import DEFAULT_CACHE
from .search import Tuner
from .state import TuneSummary
from .stop import StopSignal


def require_fixed_shapes(loaded: frontend.LoadedModel) -> None:
    """Kernels are timed on concrete tensors: fail, naming the fix, when an input still has symbolic dims."""
    dynamic = [spec for spec in loaded.inputs if any(isinstance(d, str) for d in spec.shape)]
    if dynamic:
        fixed = " ".join(f"--input-shape {s.name}={'x'.join(str(d if isinstance(d, int) else 1) for d in s.shape)}"
                         for s in dynamic)
        named = ", ".join(f"{s.name}:{s.shape_text()}" for s in dynamic)
        raise KilnError(f"kiln tune needs fixed input shapes; {named} has symbolic dims",
                        f"pass {fixed}, and compile with the same shapes so the tuned kernels match")


def tune(model: str | Path, target: str = "auto", trials: int | None = None, minutes: float | None = None,
         log_dir: str | Path | None = None, workers: int | None = None, threads: int | None = None,
         rpc: str | None = None, key: str | None = None, devices: int = 1, input_shapes=None,
         layout: str = "NHWC", keep: int | None = None, seed: int | None = None, recheck: bool = False,
         cache: str = DEFAULT_CACHE, report: Callable[[TuneSummary, str], None] | None = None) -> TuneSummary:
    """Tune MODEL's kernels for the preset TARGET and append the records to LOG_DIR (default tuning_logs/TARGET).

    Budget: TRIALS candidates in all and/or MINUTES of wall time (neither: the preset's trials per kernel).
    THREADS: threads each candidate runs with (default: every usable CPU, as `kiln run` does); WORKERS: builder
    processes. RPC ('HOST:PORT' of a TVM RPC tracker) with KEY measures on DEVICES remote boards at a time.
    KEEP: records kept per kernel afterwards (default: the preset's keep_records, 4). RECHECK: search nothing;
    re-time each searched kernel's best record against the current default schedule (Tuner.recheck).
    CACHE: how candidates are timed, 'cold' (weights flushed from the caches first, as a batch-1 run meets them)
    or 'warm' (measure.EVALUATORS); kernels whose records were timed the other way have their best records timed
    again and are searched on from those (Tuner.retime_timed_otherwise).
    REPORT(summary, message) is called after each measured batch and for each step worth saying.
    """
    if trials is not None and trials < 1:
        raise KilnError(f"--trials must be at least 1, got {trials}", "e.g. --trials 2000")
    if minutes is not None and minutes <= 0:
        raise KilnError(f"--minutes must be positive, got {minutes}", "e.g. --minutes 30")
    say = report or (lambda _summary, _message: None)
    preset = get_target(target)
    if preset.device != "cpu":
        raise KilnError(f"kiln tune searches CPU kernels only; {preset.name} runs on {preset.device}",
                        "compile it with the default GPU schedules (dlight), or tune a CPU target")
    if rpc is None and not preset.runs_here():
        raise KilnError(f"target {preset.name} ({preset.arch}) cannot run on this {platform.machine()} machine, so "
                        "its candidates cannot be timed here",
                        f"measure on the board through a TVM RPC tracker: --rpc HOST:PORT --key "
                        f"{preset.tuning.get('rpc_key', preset.name)}")
    preset.check_compiler()
    folder = Path(log_dir) if log_dir else tuning.database_dir(preset.name)
    with tuning.writer_lock(folder):  # held from the start, so a second tune fails before any work
        threads = threads or len(usable_cpus())
        loaded = frontend.load_model(Path(model), input_shapes)
        require_fixed_shapes(loaded)
        summary = TuneSummary(model=Path(model).name, target=preset.name, database=str(folder), tasks=[])
        say(summary, f"importing {Path(model).name} and optimizing the graph for {preset.name}")
        mod, _times = optimize_graph(loaded, preset, layout)
        tuner = Tuner(preset, folder, threads, workers or max(1, len(usable_cpus())), rpc, key, devices, say, cache)
        budget = trials if trials is not None else (10 ** 9 if minutes else None)  # minutes alone: time-bound
        deadline = time.monotonic() + minutes * 60 if minutes else None
        try:
            with StopSignal(deadline) as stop:
                if recheck:
                    tuner.recheck(summary, mod)
                else:
                    tuner.run(summary, mod, budget, stop, seed)
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
        finally:
            summary.records, summary.kept = tuning.prune(folder, keep or int(preset.tuning.get("keep_records", 4)))
        return summary
