"""`compile()`: ONNX model + target preset -> one artifact (library with its manifest)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax, tirx

from tvm.ir.instrument import PassTimingInstrument

import runtime
from runtime.artifact import Manifest, TensorSpec, write_artifact

from . import build, frontend, passes, tuning
from .dump import KINDS, Dumper
from .targets import TargetPreset, get_target

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


def optimize_graph(loaded: frontend.LoadedModel, preset: TargetPreset, layout: str = "NHWC",
                   pass_times: bool = False) -> tuple[tvm.IRModule, str | None]:
    """Import LOADED into Relax and run Kiln's graph passes for PRESET: the fused kernels that get scheduled
    (and that `kiln tune` tunes: both must see the same kernels for tuned records to apply). Also returns
    TVM's time-per-pass table when PASS_TIMES."""
    mod = frontend.import_relax(loaded)
    graph = passes.graph_passes(layout, preset.vector_lanes_fp32)
    instruments = [PassTimingInstrument()] if pass_times else []
    with preset.tvm(), tvm.transform.PassContext(opt_level=3, instruments=instruments):
        mod = tvm.transform.Sequential(graph, name="kiln.graph")(mod)
        return mod, instruments[0].render() if instruments else None  # render before the context clears it


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
) -> Artifact:
    """Compile the ONNX MODEL for the preset TARGET ('auto': the best for this machine) and return the artifact.

    input_shapes fixes symbolic input dims ({name: [dims]}); tuning_log is a tuning database folder, 'none' for
    default schedules only, or None for tuning_logs/TARGET; layout 'NHWC' (the default, which Kiln's CPU
    schedules are written for) converts convolutions to NHWC with HWIO weights once at compile time, 'NCHW'
    keeps the model's layout.
    dump_dir receives the intermediate forms named in dump_kinds (relax, tir, ll, asm); pass_times=True fills
    Artifact.pass_times with TVM's time per pass.
    """
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    model = Path(model)
    preset = get_target(target)
    out = Path(output) if output else default_output(model, preset)
    loaded = frontend.load_model(model, input_shapes)
    say(f"importing {model.name} (opset {loaded.opset})")
    graph = passes.graph_passes(layout, preset.vector_lanes_fp32)
    tvm_target = preset.tvm()
    dumper = Dumper(dump_dir, dump_kinds)
    say(f"optimizing the graph ({len(graph)} passes)")
    mod, timing = optimize_graph(loaded, preset, layout, pass_times)
    dumper.graph(mod)
    db_dir = None if str(tuning_log) == "none" else Path(tuning_log) if tuning_log else tuning.database_dir(preset.name)
    database, records, why_not = (tuning.database_for_compile(db_dir, preset, tuning.kernel_keys(mod)) if db_dir
                                  else (None, 0, None))
    if why_not:
        log.warning("%s", why_not)
        say(f"warning: {why_not}")
    mod, kernels = build.schedule(mod, database, tvm_target, preset.vector_lanes_fp32)
    dumper.kernels(mod)
    say(f"scheduled {len(kernels.tuned) + len(kernels.default_rule)} of "
        f"{len(kernels.tuned) + len(kernels.default_rule) + len(kernels.unscheduled)} kernels "
        f"({len(kernels.tuned)} tuned); building for {preset.name}")
    heavy = kernels.heavy()
    if heavy:
        listed = ", ".join(f"{k} ({'?' if f is None else f'{f:g}'} MFLOP)" for k, f in heavy)
        log.warning("%d heavy kernel(s) have no schedule and run as naive loops: %s", len(heavy), listed)
        say(f"warning: {len(heavy)} heavy kernel(s) run as naive loops (no tuned record, no default rule): "
            f"{listed}")
    outputs = output_specs(mod, [o.name for o in loaded.proto.graph.output])
    lower_timing = [PassTimingInstrument()] if pass_times else []
    executable = build.build_executable(mod, tvm_target, lower_timing)
    if lower_timing:
        timing = f"{timing}\n{lower_timing[0].render()}"
    dumper.machine_code(executable)
    manifest = Manifest(
        source_model=model.name,
        source_sha256=loaded.sha256,
        inputs=loaded.inputs,
        outputs=outputs,
        target=preset.name,
        tvm_target=dict(preset.tvm_target),
        arch=preset.arch,
        cpu_features=list(preset.cpu_features),
        passes=passes.pass_names(graph) + ["kiln.ApplyTuningDatabase", "kiln.DefaultSchedules"]
        + passes.pass_names(passes.lowering_passes(tvm_target)),
        tuning={"database": str(db_dir) if db_dir and tuning.has_database(db_dir) else None,
                "records": records,
                "tasks_tuned": len(kernels.tuned),
                "tasks_default": len(kernels.default_rule) + len(kernels.unscheduled)},
        kernels={**kernels.to_json(), "calls": build.kernel_calls(mod)},
        tvm_version=tvm.__version__,
        kiln_version=runtime.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        library = build.export(executable, preset, Path(tmp) / "lib.so")
        manifest.compile_seconds = round(time.perf_counter() - started, 2)
        write_artifact(library, manifest, out)
    say(f"wrote {out}")
    return Artifact(out, manifest, timing, dumper.written)
