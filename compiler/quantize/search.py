"""The precision stage of a compile: which convolutions and matmuls run in int8 or bf16, and whether int8 is kept.

In: the simplified float graph, the compile options, the preset. Out: a PrecisionBuild: the built stage
(compiler/build/stage.py), the names of the precision passes that ran, and the manifest's `quantization` entry.
int8: calibrate (or take a QDQ model's own parameters), build, measure the accuracy on held-back samples, send
the most sensitive sites back to float32 while the drop is over --max-accuracy-drop, and time the int8 build
against a float32 one (--quantize auto keeps the faster).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm

from runtime.artifact import TensorSpec
from runtime.bench import Engine, compare_engines
from runtime.errors import KilnError

from ..build.stage import StageBuild, build_stage
from ..kernels.dot_product import BF16, VNNI
from ..options import CompileOptions
from ..pipeline import pass_names, quantize_passes, uses_amx
from ..targets import TargetPreset
from . import bf16, int8, plan

Progress = Callable[[str], None]


@dataclass
class PrecisionBuild:
    """The build a compile ships, the precision passes that ran (names, for the manifest) and the manifest's
    `quantization` entry (None for a float32 model)."""

    built: StageBuild
    passes: list[str]
    quantization: dict | None


def race(vms: list[plan.Runnable], inputs: list[TensorSpec], sample: dict) -> list[float]:
    """Median ms per run of each of VMS on SAMPLE, timed the way `kiln bench` times engines (alternating blocks,
    retaken under outside load)."""
    engines = [Engine(str(i), lambda feeds, vm=vm: plan.run(vm, inputs, feeds)) for i, vm in enumerate(vms)]
    timed = compare_engines(engines, sample, repeat=16, warmup=1).engines
    return [round(timed[e.name]["median_ms"], 3) for e in engines]


def build_precision(stage: tvm.IRModule, inputs: list[TensorSpec], options: CompileOptions, preset: TargetPreset,
                    db_dir: Path | None, say: Progress, timings: list[str] | None = None,
                    instruments: list | None = None) -> PrecisionBuild:
    """Build STAGE in the precision OPTIONS ask for (or a QDQ model carries) for PRESET; see the module
    docstring. TIMINGS and INSTRUMENTS collect pass times (see build_stage)."""
    passes: list[str] = []
    bf16_counts: dict = {}
    if options.precision == "bf16":
        preset.require(BF16.amx_feature, "bf16 tile instructions")
        precision_passes = quantize_passes(amx=True, bf16=bf16.lower_bf16(bf16_counts))
        for precision_pass in precision_passes:
            stage = precision_pass(stage)
        passes += pass_names(precision_passes)
        say(f"bf16: {bf16_counts['bf16_sites']} of {bf16_counts['sites']} convolutions / matmuls on AMX")
    int8_plan = _plan(stage, inputs, options, preset, say)
    if int8_plan is None:
        built = build_stage(stage, preset, db_dir, say, timings, instruments)
        return PrecisionBuild(built, passes, {"mode": "bf16", **bf16_counts} if bf16_counts else None)
    built, skip, measured = _int8_build(stage, int8_plan, options, preset, db_dir, inputs, say, timings,
                                        instruments)
    if measured is not None and int8_plan.chosen == "int8":
        say(f"int8 accuracy vs float32 on {measured.samples} held-back sample(s): "
            + (f"top-1 agreement {measured.top1_agreement:.2%}, " if measured.top1_agreement is not None else "")
            + f"cosine {measured.cosine_similarity:.5f}, max abs error {measured.max_abs_error:.4g}")
    if int8_plan.chosen == "int8":
        passes += pass_names(quantize_passes(int8_plan, skip, uses_amx(preset)))
    entry = {"mode": "bf16", **bf16_counts} if bf16_counts else \
        _quantization_json(int8_plan, skip, measured, options.max_accuracy_drop, stage)
    return PrecisionBuild(built, passes, entry)


def _plan(stage: tvm.IRModule, inputs: list[TensorSpec], options: CompileOptions, preset: TargetPreset,
          say: Progress) -> plan.Plan | None:
    """The int8 plan: calibrated when int8 was asked for, the model's own for a QDQ model, else None."""
    if options.int8:
        preset.require(VNNI.cpu_feature, "int8 dot-product instruction")
        for note in options.notes:
            say(note)
        return plan.calibrate(stage, inputs, options.calibration, options.calibration_method,
                              lambda m: build_stage(m, preset, None).loaded(preset), say)
    found = plan.from_model(stage)
    if found:
        preset.require(VNNI.cpu_feature, "int8 dot-product instruction")
        say(f"the model is quantized (QDQ): {len(found.params)} int8 sites")
    return found


def _int8_build(stage: tvm.IRModule, int8_plan: plan.Plan, options: CompileOptions, preset: TargetPreset,
                db_dir: Path | None, inputs: list[TensorSpec], say: Progress, timings: list[str] | None,
                instruments: list | None) -> tuple[StageBuild, frozenset[int], int8.Accuracy | None]:
    """Build STAGE with INT8_PLAN's int8 sites: (the build, the sites sent back to float32, the accuracy measured
    on the held-back samples). Over --max-accuracy-drop the most sensitive sites go back to float32 until the
    drop is within it; with --quantize int8 or auto the build is timed against a float32 one, and auto keeps
    the faster."""
    max_drop, amx = options.max_accuracy_drop, uses_amx(preset)
    skip: frozenset[int] = frozenset()
    while True:
        quantized = stage
        for quantize in quantize_passes(int8_plan, skip, amx):
            quantized = quantize(quantized)
        built = build_stage(quantized, preset, db_dir, say, timings, instruments)
        measured = int8_plan.measure(built.loaded(preset), inputs)
        if measured is None or max_drop is None or measured.drop <= max_drop:
            break
        wider = int8_plan.fallback(skip)
        if wider is None:
            raise KilnError(f"int8 accuracy drop {measured.drop:.4f} exceeds --max-accuracy-drop {max_drop} even "
                            "with every site in float32",
                            "raise --max-accuracy-drop, give better --calibration data, or compile without "
                            "--quantize")
        say(f"accuracy drop {measured.drop:.4f} > {max_drop}: {len(wider)} most sensitive site(s) back to float32")
        skip = wider
    if options.int8 and int8_plan.held_back:
        say("timing the int8 build against a float32 build")
        float_build = build_stage(stage, preset, db_dir, say)
        int8_plan.latency_ms = race([built.loaded(preset), float_build.loaded(preset)],
                                    inputs, int8_plan.held_back[0])
        int8_ms, float_ms = int8_plan.latency_ms
        if int8_ms >= float_ms:
            auto = options.quantize == "auto"
            say(f"warning: int8 is not faster than float32 on {preset.name} here ({int8_ms:.2f} vs {float_ms:.2f} "
                "ms)" + ("; keeping float32" if auto else "; --quantize auto would keep float32"))
            if auto:
                built, int8_plan.chosen = float_build, "float32"
    return built, skip, measured


def _quantization_json(int8_plan: plan.Plan, skip: frozenset[int], measured: int8.Accuracy | None,
                       max_drop: float | None, stage: tvm.IRModule) -> dict:
    """The manifest's quantization entry: how the int8 sites were chosen and what accuracy they kept."""
    total = len(int8.sites(stage))
    accuracy = measured.to_json() if measured else None
    if int8_plan.chosen == "float32":  # --quantize auto found float32 faster
        return {"mode": "none", "chosen_by": "auto", "sites": total, "accuracy": accuracy, **int8_plan.to_json()}
    return {"mode": "int8", "sites": total, "int8_sites": len([i for i in int8_plan.params if i not in skip]),
            "float32_fallback": sorted(skip), "max_accuracy_drop": max_drop, "accuracy": accuracy,
            **int8_plan.to_json()}
