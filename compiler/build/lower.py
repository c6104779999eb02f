"""The lower and export stages: a scheduled module -> VM executable -> shared library on disk (and back into a
VM, to run a build as it will ship).

In: the scheduled module (compiler/build/schedule.py) and the target. Out: a relax.VMExecutable, the library
linked with the preset's (cross) compiler, or a VirtualMachine loaded from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.support import cc

from runtime.scratch import scratch_dir
from runtime.tvm_runtime import enable_amx

from ..pipeline import lowering_passes, uses_amx
from ..targets import TargetPreset
from . import cuda
from .stack_scratch import StackScratch
from .weights import lift_weights


def _tir_pipeline():
    """TVM's TIR pipeline with kiln.StackScratch before the host code's allocations are lowered."""
    pipeline, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir")
    return pipeline, (lambda: tvm.transform.Sequential([StackScratch, finalize_host()])), finalize_device


TIR_PIPELINE = "kiln"
tvm.tirx.compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, _tir_pipeline)


def lowering_context(instruments: list | None = None) -> tvm.transform.PassContext:
    """PassContext for TIR lowering: loops whose tile does not divide their extent are split into a main part
    without guards and a tail, so the register tile of the main part stays branch-free."""
    return tvm.transform.PassContext(opt_level=3, config={"s_tir.LoopPartition": {"partition_const_loop": True}},
                                     instruments=instruments)


def build_executable(mod: tvm.IRModule, target: tvm.target.Target,
                     instruments: list | None = None) -> tuple[relax.VMExecutable, dict, list[np.ndarray]]:
    """Lower the scheduled module to VM code and machine code (INSTRUMENTS: e.g. pass timing). Returns the
    executable, what the lowering found of main ({"input_alignment": bytes its main needs of its inputs' data,
    "fresh_outputs": [whether each output is a tensor the call made], the manifest's fields}) and the weights its
    main takes after the inputs (see weights.py)."""
    mod, weights = lift_weights(mod)
    report = {"input_alignment": 64, "fresh_outputs": []}
    pipeline = tvm.transform.Sequential(lowering_passes(target, report), name="kiln.lower")
    if target.kind.name == "cuda":
        cuda.prepare()
    # The CUDA device compiler reads the architecture from the current target.
    with lowering_context(instruments), target:
        return tvm.compile(mod, target=target, relax_pipeline=pipeline, tir_pipeline=TIR_PIPELINE), report, weights


def export(executable, preset: TargetPreset, path: Path) -> Path:
    """Link EXECUTABLE into a shared library at PATH with the preset's (cross) compiler (compile() checks it is
    installed before any work)."""
    fcompile = cc.cross_compiler(preset.export.get("cc", "g++"), options=list(preset.export.get("options", [])))
    executable.export_library(str(path), fcompile=fcompile)
    return path


class LoadedBuild:
    """A build loaded back as it will ship; calling it with the model's inputs (TVM tensors) runs main on them
    and the build's weights."""

    def __init__(self, vm: relax.VirtualMachine, weights: list[np.ndarray]):
        self.vm = vm
        self.weights = [tvm.runtime.tensor(w) for w in weights]

    def __call__(self, *inputs):
        return self.vm["main"](*inputs, *self.weights)


def load_vm(executable: relax.VMExecutable, weights: list[np.ndarray], preset: TargetPreset) -> LoadedBuild:
    """EXECUTABLE (with the WEIGHTS its main takes after the inputs) as it will ship: exported and loaded back.
    (A VM made on the in-memory executable records memory scopes into it, which every later load of the
    artifact then logs as a warning.)"""
    if uses_amx(preset):
        enable_amx()
    with scratch_dir("kiln-vm-") as tmp:
        library = tvm.runtime.load_module(str(export(executable, preset, Path(tmp) / "lib.so")))
    return LoadedBuild(relax.VirtualMachine(library, tvm.cpu()), weights)
