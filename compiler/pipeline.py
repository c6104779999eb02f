"""Every pass a compile runs, stage by stage and in order: the one place to read what Kiln does to a model.

    frontend   ONNX file -> Relax module (compiler/frontend)
    simplify   simplify_passes: the float graph in Kiln's layout, the stage quantization works on
    quantize   quantize_passes: kiln.QuantizeInt8 / kiln.ToBF16, when asked for (or when the model is QDQ)
    kernels    kernel_passes: packed weights, TIR kernels, fusion, row strips, in-place concatenations
    schedule   SCHEDULE_PASSES: tuned records, then Kiln's default rules (compiler/build/schedule.py)
    lower      lowering_passes: TVM's VM lowering, with kiln.ReadInputsInPlace
    export     the preset's (cross) compiler links the library (compiler/build/lower.py)

A pass that runs only under a condition is written `*when(condition, pass, ...)`, so each list stays one screen
that shows every pass of every pipeline. run_stage runs a list under the preset's target and turns a failure
inside TVM into one line naming the stage.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import tvm
from tvm import relax
from tvm.ir.instrument import PassTimingInstrument

from runtime.errors import KilnError

from . import frontend
from .kernels.dot_product import VNNI
from .passes.bound_indices import bound_indices
from .passes.border_transposes import fuse_border_transposes, fuse_input_transposes
from .passes.concat_in_place import concat_in_place
from .passes.conv1d_as_conv2d import conv1d_as_conv2d
from .passes.convert_layout import convert_conv_layout
from .passes.expand_powers import expand_powers
from .passes.fast_sigmoid import fast_sigmoid_pass
from .passes.fit_pool_windows import fit_pool_windows
from .passes.flatten_rows import flatten_rows
from .passes.fold_batch_norm import fold_batch_norm
from .passes.fold_constants import fold_constants
from .passes.fold_pad_into_conv import fold_pad_into_conv
from .passes.fuse_attention import fuse_attention, lower_attention
from .passes.inference_ops import inference_ops
from .passes.pack_weights import pack_weights
from .passes.pad_channels import pad_channels, pad_rows
from .passes.patch_conv_transpose import patch_conv_transpose
from .passes.raise_clamps import raise_clamps
from .passes.read_inputs_in_place import read_inputs_in_place
from .passes.fresh_outputs import mark_fresh_outputs
from .passes.row_kernels import row_kernels
from .passes.row_strips import fuse_row_strips
from .passes.sink_transposes import sink_transposes
from .passes.split_activations import split_activations_over_concat
from .passes.static_shape_tensors import static_shape_tensors
from .quantize import int8, plan
from .quantize.fake_quant import lower_qdq
from .targets import TargetPreset

log = logging.getLogger(__name__)

# The schedule stage is not a pass list (compiler/build/schedule.py), but the manifest names it as two passes.
SCHEDULE_PASSES = ["kiln.ApplyTuningDatabase", "kiln.DefaultSchedules"]


def when(condition: bool, *passes: tvm.transform.Pass) -> list[tvm.transform.Pass]:
    """PASSES when CONDITION holds, else none: an optional entry of a pass list, spliced in with *when(...)."""
    return list(passes) if condition else []


def simplify_passes(layout: str = "NHWC", lanes: int = 16, device: str = "cpu") -> list[tvm.transform.Pass]:
    """From the imported module to a simplified float graph in Kiln's layout: the stage quantization works on.
    Channel padding to the vector width (LANES) and row padding to the register tiles are for CPU DEVICEs only."""
    return [
        # No gather or scatter index may leave its tensor (a client's token id, a corrupt constant): before
        # folding, which would run them.
        bound_indices,
        static_shape_tensors,
        # Simplify the graph while it is still made of high-level ops.
        fold_constants,
        # A QDQ model's quantize -> dequantize pairs as fake-quant chains of plain ops (layout conversion
        # understands those); its quantized weights were folded back to float by FoldConstant.
        lower_qdq,
        inference_ops,
        expand_powers,
        fit_pool_windows,
        raise_clamps,
        fold_batch_norm,
        fold_pad_into_conv,
        conv1d_as_conv2d,
        patch_conv_transpose,
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.EliminateCommonSubexpr(),
        fold_constants,
        relax.transform.DeadCodeElimination(["main"]),
        # NHWC activations with HWIO weights: output channels contiguous for the vectorized schedules.
        # Weights are transposed once here and folded; only the model's borders get a transpose.
        *when(layout == "NHWC", convert_conv_layout, sink_transposes(), relax.transform.CanonicalizeBindings(),
              fold_constants),
        # (PadRows pads a shared activation once per matmul: ViT's Q, K and V projections each padded their
        # layer norm's output, 36 copies a run; EliminateCommonSubexpr keeps one of each.)
        *when(device == "cpu", pad_channels(lanes), fold_constants, flatten_rows, pad_rows(),
              relax.transform.EliminateCommonSubexpr()),
        split_activations_over_concat,
        relax.transform.DeadCodeElimination(["main"]),
    ]


def quantize_passes(int8_plan: plan.Plan | None = None, skip: frozenset[int] = frozenset(), amx: bool = False,
                    bf16: tvm.transform.Pass | None = None) -> list[tvm.transform.Pass]:
    """The precision stage: INT8_PLAN's sites as int8 kernels (those in SKIP stay float32; AMX: on AMX tiles),
    and the BF16 pass (quantize.bf16.lower_bf16) when given. Empty for a float32 build."""
    int8_pass = int8.lower_int8(int8_plan.params, skip, amx) if int8_plan is not None else None
    # attention in bf16 on AMX tiles, beside int8 or bf16 kernels (a float32 build stays float32)
    fused = lower_attention() if amx and (int8_pass is not None or bf16 is not None) else None
    return [p for p in (int8_pass, bf16, fused) if p is not None]


def kernel_passes(device: str = "cpu", lanes: int = 16) -> list[tvm.transform.Pass]:
    """From the simplified graph to fused TIR kernels (weights packed into Kiln's CPU tile layout on CPU DEVICEs,
    whose fp32 vectors have LANES lanes; GPU schedules read them as they are)."""
    cpu = device == "cpu"
    return [
        *when(cpu, pack_weights),
        # Lower to TIR and fuse producers with their consumers (sort/scan/sampling ops first, through TVM's
        # CPU dispatch: LegalizeOps leaves them to it).
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        # Attention left in float32 (no AMX bf16 kernel took it) as one kernel that keeps the scores in cache.
        *when(cpu, fuse_attention(lanes)),
        # Softmax and layer norm over the last axis as Kiln's row kernels: vector passes over a row in L1
        # (dlight's schedules of TVM's stages ran attention's softmax 8x slower than ONNX Runtime).
        *when(cpu, row_kernels(lanes)),
        # exp / erf / tanh as TVM's polynomial approximations, which vectorize (erf was a scalar libm call per
        # element: 4.8 ms of BERT-mini's 9.8). It rewrites Relax ops, so it runs before LegalizeOps.
        relax.transform.FastMathTransform(),
        fast_sigmoid_pass,  # sigmoid too (SiLU / swish): TVM's pass leaves it a scalar libm exp per element
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        # A transpose that writes a model output (NHWC -> NCHW) joins the epilogue of the convolution before it.
        *when(cpu, fuse_border_transposes),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        # A convolution and the depthwise one after it, as one kernel computed in strips of rows, where the
        # activation between them would not stay in cache.
        *when(cpu, fuse_row_strips(lanes)),
        # A transpose of the model's input (NCHW -> NHWC) computed inside the depthwise convolution that reads it,
        # a block of channels at a time.
        *when(cpu, fuse_input_transposes(lanes)),
        # A channel concatenation of two kernels' outputs written by the kernels themselves, in place.
        *when(cpu, concat_in_place(lanes)),
        relax.transform.DeadCodeElimination(["main"]),
    ]


def lowering_passes(target: tvm.target.Target, report: dict | None = None) -> list[tvm.transform.Pass]:
    """TVM's own passes from scheduled kernels to VM code (dataflow lowering, memory planning, shape lowering),
    for the CPU or for CUDA (which adds CUDA-graph capture of static regions). On the CPU, Kiln's
    ReadInputsInPlace runs once reshape kernels are views; it puts the input alignment it needs in REPORT, and
    MarkFreshOutputs which outputs the runtime may hand out without a copy."""
    # not re-exported by their package
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # noqa: PLC0415
    from tvm.relax.backend.cuda import pipeline as cuda  # noqa: PLC0415

    if target.kind.name == "cuda":
        return cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)
    dataflow = cpu.dataflow_lower_passes(target)
    views_made = pass_names(dataflow).index("RewriteDataflowReshape") + 1
    report = report if report is not None else {}
    in_place = [read_inputs_in_place(report), mark_fresh_outputs(report)]
    return dataflow[:views_made] + in_place + dataflow[views_made:] + cpu.finalize_passes(target)


def graph_passes(layout: str = "NHWC", lanes: int = 16, device: str = "cpu") -> list[tvm.transform.Pass]:
    """The simplify and kernels stages as one list (the precision passes, when there are any, run between them)."""
    return simplify_passes(layout, lanes, device) + kernel_passes(device, lanes)


def pass_names(passes: list[tvm.transform.Pass]) -> list[str]:
    """The names a pass list shows in the manifest and in --pass-times."""
    return [p.info.name for p in passes]


def manifest_passes(preset: TargetPreset, layout: str, precision: list[str]) -> list[str]:
    """Every pass of a build for PRESET in LAYOUT, in order, with the PRECISION passes (names) that ran between
    simplify and kernels: the manifest's `passes`."""
    lanes = preset.vector_lanes_fp32
    return (pass_names(simplify_passes(layout, lanes, preset.device)) + precision
            + pass_names(kernel_passes(preset.device, lanes)) + SCHEDULE_PASSES
            + pass_names(lowering_passes(preset.tvm())))


@contextmanager
def stage_errors(name: str):
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


def run_stage(mod: tvm.IRModule, pass_list: list, name: str, preset: TargetPreset,
              timings: list[str] | None = None) -> tvm.IRModule:
    """Run PASS_LIST on MOD under PRESET's target as the stage NAME; with TIMINGS (a list), append TVM's
    time-per-pass table."""
    instruments = [PassTimingInstrument()] if timings is not None else []
    with preset.tvm(), tvm.transform.PassContext(opt_level=3, instruments=instruments), stage_errors(name):
        mod = tvm.transform.Sequential(pass_list, name=name)(mod)
        if instruments:
            timings.append(instruments[0].render())  # render before the context clears it
    return mod


def simplify_graph(loaded: frontend.LoadedModel, preset: TargetPreset, layout: str = "NHWC",
                   timings: list[str] | None = None) -> tvm.IRModule:
    """Import LOADED into Relax and run the simplify stage: the float graph that quantization works on. When TVM's
    importer or a pass fails on it, the model is tried once more with every op that has an ONNX function body
    expanded into it (a converter of TVM's that cannot take these attributes, a pass that cannot take its
    output); the first error stands if that fails too."""
    passes = simplify_passes(layout, preset.vector_lanes_fp32, preset.device)
    try:
        return run_stage(frontend.import_relax(loaded), passes, "kiln.simplify", preset, timings)
    except KilnError as first:
        try:
            second = frontend.expanded(loaded)
        except KilnError:
            raise first from None  # expanding failed (shape inference of the expanded model): the first error stands
        if second is None:
            raise
        log.warning("%s; retrying with ONNX function bodies in place of TVM's converters", first.message)
        try:
            return run_stage(frontend.import_relax(second), passes, "kiln.simplify", preset, timings)
        except KilnError:
            raise first from None


def fuse_kernels(stage: tvm.IRModule, preset: TargetPreset, timings: list[str] | None = None) -> tvm.IRModule:
    """The graph STAGE (after simplify and quantize) as fused TIR kernels, ready to schedule."""
    return run_stage(stage, kernel_passes(preset.device, preset.vector_lanes_fp32), "kiln.kernels", preset, timings)


def optimize_graph(loaded: frontend.LoadedModel, preset: TargetPreset, layout: str = "NHWC",
                   pass_times: bool = False) -> tuple[tvm.IRModule, str | None]:
    """Import LOADED and run Kiln's graph stages for PRESET, with the int8 kernels a QDQ model asks for: the
    fused kernels that get scheduled (and that `kiln tune` tunes: both must see the same kernels for tuned
    records to apply). Also returns TVM's time-per-pass table when PASS_TIMES."""
    timings = [] if pass_times else None
    stage = simplify_graph(loaded, preset, layout, timings)
    quantized = quantize_passes(plan.from_model(stage), amx=uses_amx(preset))
    for quantize in quantized:
        stage = quantize(stage)
    mod = fuse_kernels(stage, preset, timings)
    return mod, "\n".join(timings) if timings else None


def uses_amx(preset: TargetPreset) -> bool:
    """Whether int8 kernels for PRESET run on AMX tiles."""
    return preset.has(VNNI.amx_feature)
