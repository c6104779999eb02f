"""One build of a graph stage: fuse its kernels, schedule them (tuned records first), lower to a VM executable.

In: a module after the simplify and quantize stages, the preset and the tuning database folder. Out: a
StageBuild holding each intermediate form, the kernel report and the executable. The driver builds once for a
float32 model; the int8 search (compiler/quantize/search.py) builds again for each fallback and for the race.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from ..pipeline import fuse_kernels, stage_errors
from ..targets import TargetPreset
from ..tuning import database as tuning
from .lower import LoadedBuild, build_executable, load_vm
from .schedule import KernelReport, schedule

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class StageBuild:
    """A built graph stage: its fused and scheduled modules, how each kernel was scheduled, the executable, the
    tuning records applied, the alignment in bytes main needs of its inputs' data (64 unless
    kiln.ReadInputsInPlace relaxed it) and which outputs the runtime may hand out uncopied (kiln.MarkFreshOutputs)."""

    fused: tvm.IRModule
    scheduled: tvm.IRModule
    kernels: KernelReport
    executable: relax.VMExecutable
    records: int
    input_alignment: int
    fresh_outputs: list[bool]
    weights: list[np.ndarray]  # what main takes after the inputs (compiler/build/weights.py)

    def loaded(self, preset: TargetPreset) -> LoadedBuild:
        """This build exported and loaded back, as it will ship (see lower.load_vm)."""
        return load_vm(self.executable, self.weights, preset)


def build_stage(graph_stage: tvm.IRModule, preset: TargetPreset, db_dir: Path | None, say: Progress | None = None,
                timings: list[str] | None = None, instruments: list | None = None) -> StageBuild:
    """GRAPH_STAGE fused, scheduled (the records of the tuning database in DB_DIR first, where there is one)
    and built for PRESET. TIMINGS collects the fuse stage's pass times, INSTRUMENTS the lowering's."""
    say = say or (lambda _msg: None)
    fused = fuse_kernels(graph_stage, preset, timings)
    database, applied, why_not = (tuning.database_for_compile(db_dir, preset, tuning.kernel_keys(fused))
                                  if db_dir else (None, 0, None))
    if why_not:
        log.warning("%s", why_not)
        say(f"warning: {why_not}")
    target = preset.tvm()
    with stage_errors("kiln.schedule"):
        scheduled, report = schedule(fused, database, target, preset.vector_lanes_fp32, preset.device)
    say(f"scheduled {len(report.tuned) + len(report.default_rule)} of "
        f"{len(report.tuned) + len(report.default_rule) + len(report.unscheduled)} kernels "
        f"({len(report.tuned)} tuned); building for {preset.name}")
    with stage_errors("kiln.lower"):
        executable, found, weights = build_executable(scheduled, target, instruments)
    return StageBuild(fused, scheduled, report, executable, applied, found["input_alignment"], found["fresh_outputs"],
                      weights)
