"""`compile()`: ONNX model + target preset -> one artifact (library with its manifest).

The stages, in order: options.py (checked options, the preset) -> frontend/ (load, import) -> pipeline.py
(simplify) -> quantize/search.py (precision; it builds through build/stage.py: kernels, schedule, lower) ->
build/manifest.py -> build/lower.py (export) -> runtime.artifact (library and manifest, written atomically).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tvm.ir.instrument import PassTimingInstrument

from runtime.artifact import Manifest, write_artifact
from runtime.errors import KilnError
from runtime.scratch import scratch_dir

from . import frontend, pipeline
from .build import cuda
from .build.dump import KINDS, Dumper
from .build.lower import export
from .build.manifest import make_manifest
from .describe import suggest_shape
from .options import CompileOptions
from .passes.pack_weights import WINOGRAD_ATTR
from .quantize.search import build_precision

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
    input_values: dict[str, list[float]] | None = None,
) -> Artifact:
    """Compile the ONNX MODEL for the preset TARGET ('auto': the best for this machine) and return the artifact.

    input_shapes fixes symbolic input dims ({name: [dims]}); input_values fixes inputs to values ({name: [values]},
    for inputs that decide shapes or axes, e.g. a Reduce's axes): they leave the artifact's inputs; tuning_log is a tuning database folder, 'none' for
    default schedules only, or None for tuning_logs/TARGET; layout 'NHWC' (the default, which Kiln's CPU
    schedules are written for) converts convolutions to NHWC with HWIO weights once at compile time, 'NCHW'
    keeps the model's layout.
    quantize 'int8' runs convolutions and matmuls in int8, calibrated on CALIBRATION ('random:N' or a folder of
    .npy/.npz samples) with CALIBRATION_METHOD (minmax, percentile, entropy); the accuracy against float32 on
    held-back samples goes into the manifest, and MAX_ACCURACY_DROP (a fraction: 1 - top-1 agreement, or
    1 - cosine similarity) sends the most sensitive sites back to float32 until the drop is within it.
    'auto' does the same but keeps a float32 build when it runs faster here.
    A model quantized by ONNX Runtime's tools (QDQ) gets int8 kernels without quantize.
    precision 'bf16' runs convolutions and matmuls with bf16 weights and activations (float32 sums) on AMX.
    winograd=False keeps 3x3 convolutions direct (Winograd's outputs differ from a direct convolution's by a few
    1e-5 relative; the tuning records of the Winograd kernels then do not apply).
    dump_dir receives the intermediate forms named in dump_kinds (relax, tir, ll, asm); pass_times=True fills
    Artifact.pass_times with TVM's time per pass.
    """
    options = CompileOptions(model, target, output, input_shapes, tuning_log, layout, dump_dir, dump_kinds,
                             pass_times, quantize, calibration, calibration_method, max_accuracy_drop, precision,
                             winograd, input_values)
    return compile_with(options, progress)


@contextmanager
def _dynamic_dims_hint(loaded: frontend.LoadedModel):
    """A failure of the import or a compile stage on a model with dynamic dims suggests fixing them: run-time
    shape arithmetic over a symbolic dim is what most such failures come from, and fixed dims fold it away."""
    try:
        yield
    except KilnError as err:
        dynamic = [s for s in loaded.inputs if any(not isinstance(d, int) for d in s.shape)]
        if not dynamic or "import into TVM failed" not in err.message and not err.message.startswith("kiln."):
            raise
        shapes = " ".join(f"--input-shape {s.name}={'x'.join(map(str, suggest_shape(s)[0]))}" for s in dynamic)
        raise KilnError(err.message, f"the model's dynamic dims stay symbolic; fix them, e.g. {shapes} "
                                     "(kiln inspect suggests shapes), or rerun with --debug and report it") from err


def compile_with(options: CompileOptions, progress: Progress | None = None) -> Artifact:
    """Compile as OPTIONS say (see compile), reporting progress lines to PROGRESS."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    preset = options.check().preset()
    log.debug("compiling with %s", options)
    out = options.artifact_path(preset)
    loaded = frontend.load_model(options.model, options.input_shapes, options.input_values)
    say(f"importing {options.model.name} (opset {loaded.opset})")
    graph = pipeline.graph_passes(options.layout, preset.vector_lanes_fp32, preset.device)
    dumper = Dumper(options.dump_dir, options.dump_kinds)
    say(f"optimizing the graph ({len(graph)} passes)")
    timings = [] if options.pass_times else None
    lower_timing = [PassTimingInstrument()] if options.pass_times else []
    db_dir = options.database_dir(preset)
    with _dynamic_dims_hint(loaded):
        stage = pipeline.simplify_graph(loaded, preset, options.layout, timings)
        if not options.winograd:
            stage = stage.with_attr(WINOGRAD_ATTR, False)
        shipped = build_precision(stage, loaded.inputs, options, preset, db_dir, say, timings, lower_timing)
    built = shipped.built
    dumper.graph(built.fused)
    dumper.kernels(built.scheduled)
    heavy = built.kernels.heavy()
    if heavy:
        listed = ", ".join(f"{k} ({'?' if f is None else f'{f:g}'} MFLOP)" for k, f in heavy)
        log.warning("%d heavy kernel(s) have no schedule and run as naive loops: %s", len(heavy), listed)
        say(f"warning: {len(heavy)} heavy kernel(s) run as naive loops (no tuned record, no default rule): "
            f"{listed}")
    timing = "\n".join(timings + [lower_timing[0].render()]) if timings is not None else None
    dumper.machine_code(built.executable)
    manifest = make_manifest(options.model, loaded, preset, built,
                             pipeline.manifest_passes(preset, options.layout, shipped.passes), shipped.quantization,
                             db_dir)
    with scratch_dir("kiln-build-") as tmp:
        library = export(built.executable, preset, Path(tmp) / "lib.so")
        if preset.device == "cuda":
            manifest.extra["device_code"] = cuda.check_device_code(library, preset.tvm_target["arch"])
        manifest.compile_seconds = round(time.perf_counter() - started, 2)
        write_artifact(library, manifest, out, built.weights)
    say(f"wrote {out}")
    return Artifact(out, manifest, timing, dumper.written)
