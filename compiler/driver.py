"""`compile()`: ONNX model + target preset -> one artifact (library with its manifest)."""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax, tirx

from tvm.ir.instrument import PassTimingInstrument

import runtime
from runtime.artifact import Manifest, TensorSpec, write_artifact
from runtime.bench import Engine, compare_engines
from runtime.errors import KilnError
from runtime.tvm_runtime import enable_amx

from . import build, cuda, dot_product, frontend, int8, passes, quantization, tuning
from .dump import KINDS, Dumper
from .precision import PRECISIONS, lower_bf16
from .targets import TargetPreset, all_targets, get_target
from .weight_packing import WINOGRAD_ATTR

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class Artifact:
    """A compiled model on disk; pass_times holds TVM's per-pass timing table when it was asked for."""

    path: Path
    manifest: Manifest
    pass_times: str | None = None
    dumped: list[Path] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


def _dim(value) -> int | str:
    return int(value) if isinstance(value, tirx.IntImm) else str(value)


def output_specs(mod: tvm.IRModule, names: list[str]) -> list[TensorSpec]:
    """Output specs of `main` (shapes from Relax, symbolic dims by name) under the ONNX output NAMES."""
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for name, ty in zip(names, fields):
        shape = [_dim(d) for d in ty.shape.values] if ty.shape is not None else []
        specs.append(TensorSpec(name, str(ty.dtype), shape))
    return specs


def default_output(model: Path, preset: TargetPreset) -> Path:
    """MODEL's folder / STEM.TARGET.so."""
    return model.with_name(f"{model.stem}.{preset.name}.so")


def _run_passes(mod: tvm.IRModule, pass_list: list, name: str, preset: TargetPreset,
                timings: list[str] | None) -> tvm.IRModule:
    """Run PASS_LIST on MOD under PRESET's target; with TIMINGS (a list), append TVM's time-per-pass table."""
    instruments = [PassTimingInstrument()] if timings is not None else []
    with preset.tvm(), tvm.transform.PassContext(opt_level=3, instruments=instruments), _stage(name):
        mod = tvm.transform.Sequential(pass_list, name=name)(mod)
        if instruments:
            timings.append(instruments[0].render())  # render before the context clears it
    return mod


@contextmanager
def _stage(name: str):
    """Turn a failure inside TVM during the stage NAME into one KilnError line that says which stage and what."""
    try:
        yield
    except KilnError:
        raise
    except Exception as err:  # TVM's passes and codegen raise many types
        log.debug("%s failed", name, exc_info=True)
        raise KilnError(f"{name} failed on this model: {frontend.error_line(err)}",
                        "the model may be invalid (e.g. shapes that do not fit); otherwise this is a Kiln bug: "
                        "rerun with --debug and report it with the model") from err


def simplify_graph(loaded: frontend.LoadedModel, preset: TargetPreset, layout: str = "NHWC",
                   timings: list[str] | None = None) -> tvm.IRModule:
    """Import LOADED into Relax and simplify it into Kiln's layout (passes.simplify_passes): the float graph
    that quantization works on. TIMINGS: see _run_passes."""
    return _run_passes(frontend.import_relax(loaded),
                       passes.simplify_passes(layout, preset.vector_lanes_fp32, preset.device), "kiln.simplify",
                       preset, timings)


def fuse_kernels(stage: tvm.IRModule, preset: TargetPreset, timings: list[str] | None = None) -> tvm.IRModule:
    """The simplified graph STAGE as fused TIR kernels, ready to schedule (passes.kernel_passes)."""
    return _run_passes(stage, passes.kernel_passes(preset.device, preset.vector_lanes_fp32), "kiln.kernels", preset,
                       timings)


def optimize_graph(loaded: frontend.LoadedModel, preset: TargetPreset, layout: str = "NHWC",
                   pass_times: bool = False) -> tuple[tvm.IRModule, str | None]:
    """Import LOADED and run Kiln's graph passes for PRESET, with the int8 kernels a QDQ model asks for: the
    fused kernels that get scheduled (and that `kiln tune` tunes: both must see the same kernels for tuned
    records to apply). Also returns TVM's time-per-pass table when PASS_TIMES."""
    timings = [] if pass_times else None
    stage = simplify_graph(loaded, preset, layout, timings)
    plan = int8.from_model(stage)
    if plan:
        stage = quantization.lower_int8(plan.params, amx=_has_amx(preset))(stage)
    mod = fuse_kernels(stage, preset, timings)
    return mod, "\n".join(timings) if timings else None


@dataclass
class _StageBuild:
    fused: tvm.IRModule
    scheduled: tvm.IRModule
    kernels: build.KernelReport
    executable: relax.VMExecutable
    records: int
    input_alignment: int  # bytes main needs of its inputs' data (64 unless kiln.ReadInputsInPlace relaxed it)


def _build_stage(graph_stage: tvm.IRModule, preset: TargetPreset, db_dir: Path | None, say: Progress | None = None,
                 timings: list[str] | None = None, instruments: list | None = None) -> _StageBuild:
    """GRAPH_STAGE fused, scheduled (the records of the tuning database in DB_DIR first, where there is one)
    and built for PRESET."""
    say = say or (lambda _msg: None)
    fused = fuse_kernels(graph_stage, preset, timings)
    database, applied, why_not = (tuning.database_for_compile(db_dir, preset, tuning.kernel_keys(fused))
                                  if db_dir else (None, 0, None))
    if why_not:
        log.warning("%s", why_not)
        say(f"warning: {why_not}")
    target = preset.tvm()
    with _stage("kiln.schedule"):
        scheduled, report = build.schedule(fused, database, target, preset.vector_lanes_fp32, preset.device)
    say(f"scheduled {len(report.tuned) + len(report.default_rule)} of "
        f"{len(report.tuned) + len(report.default_rule) + len(report.unscheduled)} kernels "
        f"({len(report.tuned)} tuned); building for {preset.name}")
    with _stage("kiln.lower"):
        executable, input_alignment = build.build_executable(scheduled, target, instruments)
    return _StageBuild(fused, scheduled, report, executable, applied, input_alignment)


def race(vms: list[relax.VirtualMachine], inputs, sample: dict) -> list[float]:
    """Median ms per run of each of VMS on SAMPLE, timed the way `kiln bench` times engines (alternating blocks,
    retaken under outside load)."""
    engines = [Engine(str(i), lambda feeds, vm=vm: int8.run(vm, inputs, feeds)) for i, vm in enumerate(vms)]
    timed = compare_engines(engines, sample, repeat=16, warmup=1).engines
    return [round(timed[e.name]["median_ms"], 3) for e in engines]


def _vm(executable, preset: TargetPreset) -> relax.VirtualMachine:
    """A VM over EXECUTABLE as it will ship: exported and loaded back. (A VM made on the in-memory executable
    records memory scopes into it, which every later load of the artifact then logs as a warning.)"""
    if _has_amx(preset):
        enable_amx()
    with tempfile.TemporaryDirectory(prefix="kiln-vm-") as tmp:
        library = tvm.runtime.load_module(str(build.export(executable, preset, Path(tmp) / "lib.so")))
    return relax.VirtualMachine(library, tvm.cpu())


def _has_amx(preset: TargetPreset) -> bool:
    return dot_product.VNNI.amx_feature in preset.cpu_features


def _check_feature(preset: TargetPreset, feature: str, what: str) -> None:
    """A clear error when PRESET lacks FEATURE (the instruction WHAT names), listing the presets that have it."""
    if feature not in preset.cpu_features:
        with_it = [name for name, t in all_targets().items() if feature in t.cpu_features]
        raise KilnError(f"target {preset.name} has no {what} ({feature})",
                        f"use a target that has it: {', '.join(with_it) or 'none known'}")


def _check_int8_target(preset: TargetPreset) -> None:
    _check_feature(preset, dot_product.VNNI.cpu_feature, "int8 dot-product instruction")


def _quantization_json(plan, skip, measured, max_drop, stage) -> dict | None:
    """The manifest's quantization entry: how the int8 sites were chosen and what accuracy they kept."""
    if plan is None:
        return None
    total = len(quantization.sites(stage))
    if plan.chosen == "float32":  # --quantize auto found float32 faster
        return {"mode": "none", "chosen_by": "auto", "sites": total, "accuracy": measured.to_json() if measured
                else None, **plan.to_json()}
    return {"mode": "int8", "sites": total, "int8_sites": len([i for i in plan.params if i not in skip]),
            "float32_fallback": sorted(skip), "max_accuracy_drop": max_drop,
            "accuracy": measured.to_json() if measured else None, **plan.to_json()}


def _int8_build(stage: tvm.IRModule, plan: int8.Plan, quantize: str | None, max_drop: float | None,
                preset: TargetPreset, db_dir: Path | None, inputs, say: Progress, timings: list[str] | None,
                instruments: list) -> tuple[_StageBuild, frozenset[int], quantization.Accuracy | None]:
    """Build STAGE with PLAN's int8 sites: (the build, the sites sent back to float32, the accuracy measured on
    the held-back samples). Over MAX_DROP the most sensitive sites go back to float32 until the drop is within
    it; with QUANTIZE 'int8' or 'auto' the build is timed against a float32 one, and 'auto' keeps the faster."""
    skip: frozenset[int] = frozenset()
    while True:
        quantized = quantization.lower_int8(plan.params, skip, _has_amx(preset))(stage)
        built = _build_stage(quantized, preset, db_dir, say, timings, instruments)
        measured = plan.measure(_vm(built.executable, preset), inputs)
        if measured is None or max_drop is None or measured.drop <= max_drop:
            break
        wider = plan.fallback(skip)
        if wider is None:
            raise KilnError(f"int8 accuracy drop {measured.drop:.4f} exceeds --max-accuracy-drop {max_drop} even "
                            "with every site in float32",
                            "raise --max-accuracy-drop, give better --calibration data, or compile without "
                            "--quantize")
        say(f"accuracy drop {measured.drop:.4f} > {max_drop}: {len(wider)} most sensitive site(s) back to float32")
        skip = wider
    if quantize in ("int8", "auto") and plan.held_back:
        say("timing the int8 build against a float32 build")
        float_build = _build_stage(stage, preset, db_dir, say)
        plan.latency_ms = race([_vm(built.executable, preset), _vm(float_build.executable, preset)], inputs,
                               plan.held_back[0])
        int8_ms, float_ms = plan.latency_ms
        if int8_ms >= float_ms:
            say(f"warning: int8 is not faster than float32 on {preset.name} here ({int8_ms:.2f} vs {float_ms:.2f} "
                "ms)" + ("; keeping float32" if quantize == "auto" else "; --quantize auto would keep float32"))
            if quantize == "auto":
                built, plan.chosen = float_build, "float32"
    return built, skip, measured


def compile(  # noqa: A001 - the name users expect: compiler.compile(model, target=...)
    model: str | Path,
    target: str = "auto",
    output: str | Path | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    tuning_log: str | Path | None = None,
    layout: str = "NHWC",
    progress: Progress | None = None,
    dump_dir: str | Path | None = None,
    dump_kinds: tuple[str, ...] = KINDS,
    pass_times: bool = False,
    quantize: str | None = None,
    calibration: str | None = None,
    calibration_method: str = "minmax",
    max_accuracy_drop: float | None = None,
    precision: str = "fp32",
    winograd: bool = True,
) -> Artifact:
    """Compile the ONNX MODEL for the preset TARGET ('auto': the best for this machine) and return the artifact.

    input_shapes fixes symbolic input dims ({name: [dims]}); tuning_log is a tuning database folder, 'none' for
    default schedules only, or None for tuning_logs/TARGET; layout 'NHWC' (the default, which Kiln's CPU
    schedules are written for) converts convolutions to NHWC with HWIO weights once at compile time, 'NCHW'
    keeps the model's layout.
    quantize 'int8' runs convolutions and matmuls in int8, calibrated on CALIBRATION ('random:N' or a folder of
    .npy/.npz samples) with CALIBRATION_METHOD (minmax, percentile, entropy); the accuracy against float32 on
    held-back samples goes into the manifest, and MAX_ACCURACY_DROP (a fraction: 1 - top-1 agreement, or
    1 - cosine similarity) sends the most sensitive sites back to float32 until the drop is within it.
    A model quantized by ONNX Runtime's tools (QDQ) gets int8 kernels without quantize.
    precision 'bf16' runs convolutions and matmuls with bf16 weights and activations (float32 sums) on AMX.
    winograd=False keeps 3x3 convolutions direct (Winograd's outputs differ from a direct convolution's by a few
    1e-5 relative; the tuning records of the Winograd kernels then do not apply).
    dump_dir receives the intermediate forms named in dump_kinds (relax, tir, ll, asm); pass_times=True fills
    Artifact.pass_times with TVM's time per pass.
    """
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    model = Path(model)
    if quantize not in (None, "none", "int8", "auto"):
        raise KilnError(f"unknown quantization '{quantize}'", "use --quantize int8 or auto (or leave it out)")
    if quantize not in ("int8", "auto") and (calibration or max_accuracy_drop is not None):
        given = "--calibration" if calibration else "--max-accuracy-drop"
        raise KilnError(f"{given} applies to int8 builds only", f"add --quantize int8 (or auto), or drop {given}")
    if precision not in PRECISIONS or (precision != "fp32" and quantize in ("int8", "auto")):
        raise KilnError(f"precision '{precision}' with quantize '{quantize}' is not a combination Kiln builds",
                        f"use --precision {' or '.join(PRECISIONS)}, and bf16 without --quantize")
    preset = get_target(target, prefer=dot_product.VNNI.amx_feature if quantize in ("int8", "auto")
                        else dot_product.BF16.amx_feature if precision == "bf16" else None)
    preset.check_compiler()
    out = Path(output) if output else default_output(model, preset)
    loaded = frontend.load_model(model, input_shapes)
    say(f"importing {model.name} (opset {loaded.opset})")
    graph = passes.graph_passes(layout, preset.vector_lanes_fp32, preset.device)
    tvm_target = preset.tvm()
    dumper = Dumper(dump_dir, dump_kinds)
    say(f"optimizing the graph ({len(graph)} passes)")
    timings = [] if pass_times else None
    stage = simplify_graph(loaded, preset, layout, timings)
    if not winograd:
        stage = stage.with_attr(WINOGRAD_ATTR, False)
    db_dir = None if str(tuning_log) == "none" else Path(tuning_log) if tuning_log else tuning.database_dir(preset.name)

    bf16_counts: dict = {}
    if precision == "bf16":
        _check_feature(preset, dot_product.BF16.amx_feature, "bf16 tile instructions")
        stage = lower_bf16(bf16_counts)(stage)
        say(f"bf16: {bf16_counts['bf16_sites']} of {bf16_counts['sites']} convolutions / matmuls on AMX")
    if quantize in ("int8", "auto"):
        _check_int8_target(preset)
        if not calibration:
            calibration = "random:32"
            say("warning: no --calibration given: calibrating on 32 random inputs (give real samples for "
                "meaningful ranges)")
        plan = int8.calibrate(stage, loaded.inputs, calibration, calibration_method,
                              lambda m: _vm(_build_stage(m, preset, None).executable, preset), say)
    else:
        plan = int8.from_model(stage)
        if plan:
            _check_int8_target(preset)
            say(f"the model is quantized (QDQ): {len(plan.params)} int8 sites")

    lower_timing = [PassTimingInstrument()] if pass_times else []
    if plan is None:
        built, skip, measured = _build_stage(stage, preset, db_dir, say, timings, lower_timing), frozenset(), None
    else:
        built, skip, measured = _int8_build(stage, plan, quantize, max_accuracy_drop, preset, db_dir, loaded.inputs,
                                            say, timings, lower_timing)
    mod, kernels, executable, records = built.scheduled, built.kernels, built.executable, built.records
    dumper.graph(built.fused)
    if measured is not None and plan.chosen == "int8":
        say(f"int8 accuracy vs float32 on {measured.samples} held-back sample(s): "
            + (f"top-1 agreement {measured.top1_agreement:.2%}, " if measured.top1_agreement is not None else "")
            + f"cosine {measured.cosine_similarity:.5f}, max abs error {measured.max_abs_error:.4g}")
    dumper.kernels(mod)
    heavy = kernels.heavy()
    if heavy:
        listed = ", ".join(f"{k} ({'?' if f is None else f'{f:g}'} MFLOP)" for k, f in heavy)
        log.warning("%d heavy kernel(s) have no schedule and run as naive loops: %s", len(heavy), listed)
        say(f"warning: {len(heavy)} heavy kernel(s) run as naive loops (no tuned record, no default rule): "
            f"{listed}")
    timing = "\n".join(timings + [lower_timing[0].render()]) if timings is not None else None
    dumper.machine_code(executable)
    outputs = output_specs(mod, [o.name for o in loaded.proto.graph.output])
    manifest = Manifest(
        source_model=model.name,
        source_sha256=loaded.sha256,
        inputs=loaded.inputs,
        outputs=outputs,
        target=preset.name,
        tvm_target=dict(preset.tvm_target),
        arch=preset.arch,
        device=preset.device,
        cpu_features=list(preset.cpu_features),
        passes=passes.pass_names(passes.simplify_passes(layout, device=preset.device))
        + (["kiln.QuantizeInt8"] if plan and plan.chosen == "int8" else [])
        + (["kiln.ToBF16"] if bf16_counts else [])
        + passes.pass_names(passes.kernel_passes(preset.device, preset.vector_lanes_fp32))
        + ["kiln.ApplyTuningDatabase", "kiln.DefaultSchedules"]
        + passes.pass_names(passes.lowering_passes(tvm_target)),
        tuning={"database": str(db_dir) if db_dir and tuning.has_database(db_dir) else None,
                "records": records,
                "tasks_tuned": len(kernels.tuned),
                "tasks_default": len(kernels.default_rule) + len(kernels.unscheduled)},
        kernels={**kernels.to_json(), "calls": build.kernel_calls(mod)},
        quantization=_quantization_json(plan, skip, measured, max_accuracy_drop, stage) if not bf16_counts
        else {"mode": "bf16", **bf16_counts},
        tvm_version=tvm.__version__,
        kiln_version=runtime.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        input_alignment=built.input_alignment,
    )
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        library = build.export(executable, preset, Path(tmp) / "lib.so")
        if preset.device == "cuda":
            manifest.extra["device_code"] = cuda.check_device_code(library, preset.tvm_target["arch"])
        manifest.compile_seconds = round(time.perf_counter() - started, 2)
        write_artifact(library, manifest, out)
    say(f"wrote {out}")
    return Artifact(out, manifest, timing, dumper.written)
