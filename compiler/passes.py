"""Kiln's graph passes and the pipelines that compose them: a pipeline is a list a reader sees at once."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .fake_quant import lower_qdq
from .weight_packing import pack_weights
from .relax_util import (const_value, kernels_by_name, mutator_pass, only_block, op_name, rewrite_relax_functions,
                         single_use_vars)
from .concat_in_place import concat_in_place
from .input_alignment import read_inputs_in_place
from .strip_fusion import fuse_row_strips


@mutator
class _BatchNormFolder(PyExprMutator):
    """Rewrites batch_norm(conv2d(x, W) [+ b]) into conv2d(x, W * s) + b' (likewise for matmul with a constant
    right-hand side), with s = gamma / sqrt(var + eps) and b' = (b - mean) * s + beta computed at compile time."""

    def _producer(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _linear_with_bias(self, data):
        """(linear call, bias array or None) when DATA is conv2d/matmul with constant weights, plus a constant."""
        producer = self._producer(data)
        bias = None
        if op_name(producer) == "relax.add":
            lhs, rhs = producer.args
            bias, producer = const_value(rhs), self._producer(lhs)
            if bias is None:
                return None, None
        name = op_name(producer)
        if name == "relax.nn.conv2d":
            attrs = producer.attrs
            if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
                return None, None
        elif name != "relax.matmul":
            return None, None
        if const_value(producer.args[1]) is None:
            return None, None
        return producer, bias

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.nn.batch_norm":
            return call
        data, *stats = call.args
        gamma, beta, mean, var = (const_value(s) for s in stats)
        linear, bias = self._linear_with_bias(data)
        rank = data.ty.ndim
        if linear is None or any(a is None for a in (gamma, beta, mean, var)):
            return call
        is_conv = op_name(linear) == "relax.nn.conv2d"
        if (is_conv and int(call.attrs.axis) not in (1, 1 - rank)) or (
            not is_conv and int(call.attrs.axis) not in (-1, rank - 1)
        ):
            return call
        dtype = str(data.ty.dtype)
        scale = (gamma if call.attrs.scale else np.ones_like(gamma)) / np.sqrt(var + float(call.attrs.epsilon))
        shift = (beta if call.attrs.center else np.zeros_like(beta)) - mean * scale
        weight = const_value(linear.args[1])
        if is_conv:
            weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
            bias_shape = (1, -1) + (1,) * (rank - 2)
        else:
            weight = weight * scale
            bias_shape = (-1,)
        if bias is not None:
            shift = shift + (bias.reshape(-1) if bias.size == scale.size else bias) * scale
        new_linear = self.builder_.emit(
            relax.Call(linear.op, [linear.args[0], relax.const(weight.astype(dtype))], linear.attrs)
        )
        folded = self.builder_.emit(relax.op.add(new_linear, relax.const(shift.astype(dtype).reshape(bias_shape))))
        return relax.Tuple([folded, stats[2], stats[3]])


@tvm.transform.module_pass(opt_level=0, name="kiln.FoldBatchNorm")
def fold_batch_norm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Fold inference batch-norms into the conv2d / matmul (with constant weights) that feeds them."""
    return rewrite_relax_functions(mod, _BatchNormFolder)


_CLAMPS = {"Max": "lower", "Min": "upper"}


def _scalar_clamp(func) -> str | None:
    """'lower' / 'upper' when FUNC is exactly out[i] = max / min(x[i], s[]) with a 0-d S, as TVM's ONNX importer
    emits for Clip; None otherwise."""
    if not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 3:
        return None
    store = getattr(only_block(func), "body", None)
    value = getattr(store, "value", None)
    kind = _CLAMPS.get(type(value).__name__)
    if kind is None or not isinstance(store, tvm.tirx.BufferStore):
        return None
    data, bound = value.a, value.b
    if type(data).__name__ != "TensorLoad" or type(bound).__name__ != "TensorLoad" or len(bound.indices) != 0:
        return None
    if [str(i) for i in data.indices] != [str(i) for i in store.indices]:
        return None
    return kind


@mutator
class _ClampRaiser(PyExprMutator):
    """call_tir(max|min with a constant scalar) -> R.maximum / R.minimum, ops that layout conversion understands
    (R.clip has no layout rule)."""

    def __init__(self, mod):
        super().__init__(mod)
        self.kernels = kernels_by_name(mod)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.call_tir" or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return call
        # a call_tir may name a kernel defined elsewhere (a dynamic slice's shape_func): not a clamp then
        kind = _scalar_clamp(self.kernels.get(call.args[0].name_hint))
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        bound = const_value(args[1]) if len(args) == 2 else None
        if kind is None or bound is None or bound.ndim != 0 or np.isnan(bound):
            return call
        scalar = relax.const(bound, str(args[0].ty.dtype))
        return relax.op.maximum(args[0], scalar) if kind == "lower" else relax.op.minimum(args[0], scalar)


@tvm.transform.module_pass(opt_level=0, name="kiln.RaiseClamps")
def raise_clamps(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Turn the importer's TIR max/min-with-a-scalar kernels (ONNX Clip, ReLU6) back into Relax ops."""
    return rewrite_relax_functions(mod, _ClampRaiser)


@mutator
class _ChannelPadder(PyExprMutator):
    """conv2d (NHWC, HWIO) / matmul with constant weights whose output channels are not a multiple of the vector
    width: weights padded with zero columns, the output sliced back."""

    def __init__(self, mod, lanes: int):
        super().__init__(mod)
        self.lanes = lanes

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name == "relax.nn.conv2d" and (call.attrs.data_layout, call.attrs.kernel_layout) != ("NHWC", "HWIO"):
            return call
        weight = const_value(call.args[1]) if name in ("relax.nn.conv2d", "relax.matmul") else None
        if weight is None or weight.ndim < 2 or (name == "relax.nn.conv2d" and int(call.attrs.groups) != 1):
            return call
        cols = weight.shape[-1]
        padded = -(-cols // self.lanes) * self.lanes
        if cols % self.lanes == 0 or cols < 2 * self.lanes:
            return call
        widths = [(0, 0)] * (weight.ndim - 1) + [(0, padded - cols)]
        wide = self.builder_.emit(relax.Call(call.op, [call.args[0], relax.const(np.pad(weight, widths))],
                                             call.attrs))
        rank = call.ty.ndim
        return relax.op.strided_slice(wide, axes=[rank - 1], begin=[0], end=[cols])


def pad_channels(lanes: int) -> tvm.transform.Pass:
    """Pad output channels of constant-weight convolutions and matmuls to a multiple of LANES (1000 -> 1008):
    the register tile then uses full vectors. Measured on SqueezeNet's 169x1000 classifier: half-width vectors
    ran 2x slower, and a guarded last vector 2.5-10x slower, than full ones."""
    return mutator_pass("kiln.PadChannels", functools.partial(_ChannelPadder, lanes=lanes))


# Activations that commute with concatenation: f(concat(a, b)) == concat(f(a), f(b)) elementwise.
_PIECEWISE_ACTIVATIONS = ("relax.nn.relu", "relax.sigmoid", "relax.tanh")


@mutator
class _ActivationSplitter(PyExprMutator):
    """relu(concat(a, b, ...)) -> concat(relu(a), relu(b), ...) where the concatenation feeds only the activation:
    each activation then fuses into the kernel that makes its piece, and the concatenation is a plain one that
    kiln.ConcatInPlace can hand to those kernels (ShuffleNet's downsampling units)."""

    def __init__(self, mod):
        super().__init__(mod)
        self.single_use = single_use_vars(mod)

    def visit_call_(self, call):
        name = op_name(call)
        candidate = name in _PIECEWISE_ACTIVATIONS and isinstance(call.args[0], relax.DataflowVar) \
            and call.args[0] in self.single_use
        call = self.visit_expr_post_order(call)
        concat = self.lookup_binding(call.args[0]) if candidate else None
        if op_name(concat) != "relax.concat" or not isinstance(concat.args[0], relax.Tuple):
            return call
        pieces = [self.builder_.emit(relax.Call(call.op, [piece], call.attrs)) for piece in concat.args[0].fields]
        return relax.Call(concat.op, [relax.Tuple(pieces)], concat.attrs)


@tvm.transform.module_pass(opt_level=0, name="kiln.SplitActivationsOverConcat")
def split_activations_over_concat(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Move an activation after a concatenation onto each of its pieces (see _ActivationSplitter)."""
    return rewrite_relax_functions(mod, _ActivationSplitter)


@tvm.transform.module_pass(opt_level=0, name="kiln.FoldConstant")
def fold_constants(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Relax's FoldConstant, kept only when its result is well formed: on a dynamic Slice it leaves a call to a
    shape function it never adds to the module ('no definition of shape_func'); the graph then stays unfolded."""
    folded = relax.transform.FoldConstant()(mod)
    try:
        relax.analysis.well_formed(folded)  # raises (it returns nothing) on an undefined GlobalVar
    except Exception:  # noqa: BLE001 - TVM's check raises its own error types
        return mod
    return folded


def _has_conv2d(mod: tvm.IRModule) -> bool:
    found = []

    def visit(expr):
        if op_name(expr) == "relax.nn.conv2d":
            found.append(expr)

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="kiln.ConvertLayout")
def convert_conv_layout(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """ConvertLayout to NHWC activations / HWIO weights, on modules that have a convolution. Without one it has
    nothing to gain, and TVM's layout inference fails on some ops (Erf and Max with broadcasting: 'Invalid SLayout')
    even when there is nothing to convert."""
    if not _has_conv2d(mod):
        return mod
    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)


def graph_passes(layout: str = "NHWC", lanes: int = 16, device: str = "cpu") -> list[tvm.transform.Pass]:
    """Graph-level passes, from the imported module to fused TIR kernels (the int8 passes, when asked for, run
    between the two halves: see driver.optimize_graph)."""
    return simplify_passes(layout, lanes, device) + kernel_passes(device, lanes)


def simplify_passes(layout: str = "NHWC", lanes: int = 16, device: str = "cpu") -> list[tvm.transform.Pass]:
    """From the imported module to a simplified float graph in Kiln's layout: the stage quantization works on.
    Channel padding to the vector width is for CPU DEVICEs only."""
    return [
        # Simplify the graph while it is still made of high-level ops.
        fold_constants,
        # A QDQ model's quantize -> dequantize pairs as fake-quant chains of plain ops (layout conversion
        # understands those); its quantized weights were folded back to float by FoldConstant.
        lower_qdq,
        raise_clamps,
        fold_batch_norm,
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.EliminateCommonSubexpr(),
        fold_constants,
        relax.transform.DeadCodeElimination(["main"]),
        # NHWC activations with HWIO weights: output channels contiguous for the vectorized schedules.
        # Weights are transposed once here and folded; only the model's borders get a transpose.
        *([convert_conv_layout, fold_constants] if layout == "NHWC" else []),
        *([pad_channels(lanes), fold_constants] if device == "cpu" else []),
        split_activations_over_concat,
        relax.transform.DeadCodeElimination(["main"]),
    ]


def kernel_passes(device: str = "cpu", lanes: int = 16) -> list[tvm.transform.Pass]:
    """From the simplified graph to fused TIR kernels (weights packed into Kiln's CPU tile layout on CPU DEVICEs,
    whose fp32 vectors have LANES lanes; GPU schedules read them as they are)."""
    return [
        *([pack_weights] if device == "cpu" else []),
        # Lower to TIR and fuse producers with their consumers (sort/scan/sampling ops first, through TVM's
        # CPU dispatch: LegalizeOps leaves them to it).
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        # exp / erf / tanh as TVM's polynomial approximations, which vectorize (erf was a scalar libm call per
        # element: 4.8 ms of BERT-mini's 9.8). It rewrites Relax ops, so it runs before LegalizeOps.
        relax.transform.FastMathTransform(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        # A convolution and the depthwise one after it, as one kernel computed in strips of rows, where the
        # activation between them would not stay in cache.
        *([fuse_row_strips(lanes)] if device == "cpu" else []),
        # A channel concatenation of two kernels' outputs written by the kernels themselves, in place.
        *([concat_in_place(lanes)] if device == "cpu" else []),
        relax.transform.DeadCodeElimination(["main"]),
    ]


def lowering_passes(target: tvm.target.Target, report: dict | None = None) -> list[tvm.transform.Pass]:
    """TVM's own passes from scheduled kernels to VM code (dataflow lowering, memory planning, shape lowering),
    for the CPU or for CUDA (which adds CUDA-graph capture of static regions). On the CPU, Kiln's
    ReadInputsInPlace runs once reshape kernels are views; it puts the input alignment it needs in REPORT."""
    # not re-exported by their package
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # noqa: PLC0415
    from tvm.relax.backend.cuda import pipeline as cuda  # noqa: PLC0415

    if target.kind.name == "cuda":
        return cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)
    dataflow = cpu.dataflow_lower_passes(target)
    views_made = pass_names(dataflow).index("RewriteDataflowReshape") + 1
    in_place = read_inputs_in_place(report if report is not None else {})
    return dataflow[:views_made] + [in_place] + dataflow[views_made:] + cpu.finalize_passes(target)


def pass_names(passes: list[tvm.transform.Pass]) -> list[str]:
    """The names a pass list shows in the manifest and in --pass-times."""
    return [p.info.name for p in passes]
