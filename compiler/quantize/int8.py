"""INT8 post-training quantization as graph passes on the float graph after layout conversion.

Sites: convolutions (NHWC, HWIO, not grouped) and matmuls with constant float32 weights whose output channels
are a multiple of 16. Each site becomes one int8 kernel (compiler/kernels/dot_product.py):
    quantize x to uint8 (scale, zero point from calibration, or from the model's own QDQ pair)
    -> int32 sums with per-output-channel symmetric int8 weights (AMX tiles where the target has them and the
       shape suits, else AVX-512 VNNI)
    -> float32 (sums - zero-point correction) x scale, in the same kernel, where the bias, the activation and the
       next site's quantize fuse in: between adjacent int8 sites the tensor in memory is uint8.
Everything else stays float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import dot_product
from ..passes.relax_util import OUT_ELEMWISE_FUSABLE, const_value, mutator_pass, op_name
from . import fake_quant
from .fake_quant import QuantParams

PASS_NAME = "kiln.QuantizeInt8"
WEIGHT_QMAX = 127  # symmetric int8 weights in [-127, 127]


def site_kind(call) -> str | None:
    """'conv2d' / 'depthwise' / 'matmul' when CALL is a quantizable site (module docstring), else None."""
    name = op_name(call)
    if name not in ("relax.nn.conv2d", "relax.matmul"):
        return None
    weight = const_value(call.args[1])
    data = call.args[0].ty
    if weight is None or weight.dtype != np.float32 or getattr(data, "dtype", None) != "float32" \
            or weight.shape[-1] % dot_product.LANES:
        return None
    if name == "relax.matmul":
        return "matmul" if weight.ndim == 2 and getattr(data, "ndim", 0) >= 2 else None
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "HWIO", "NHWC") \
            or str(attrs.out_dtype) not in ("", "None", "float32", "void"):
        return None
    if int(attrs.groups) == 1:
        return "conv2d"
    return "depthwise" if weight.ndim == 4 and weight.shape[2] == 1 and int(attrs.groups) == weight.shape[3] else None


def sites(mod: tvm.IRModule) -> list[relax.Call]:
    """The quantizable calls of `main`, in binding order (the order the site indices below refer to)."""
    found = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding) and site_kind(binding.value):
                found.append(binding.value)
    return found


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-output-channel scales): symmetric, the last axis is the output channel."""
    reduce = tuple(range(weight.ndim - 1))
    scale = np.abs(weight).max(axis=reduce) / WEIGHT_QMAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    quantized = np.clip(np.round(weight / scale), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return quantized, scale


def weight_noise(call: relax.Call) -> float:
    """Relative energy of the quantization error of site CALL's weights (a sensitivity signal for the fallback
    order); 0 for a depthwise site, whose weights stay float32."""
    if site_kind(call) == "depthwise":
        return 0.0
    weight = const_value(call.args[1])
    quantized, scale = quantize_weight(weight)
    return float(np.sum((quantized * scale - weight) ** 2) / max(np.sum(weight.astype(np.float64) ** 2), 1e-30))


def _int8_kernel(kind: str, attrs, weight: np.ndarray, params: QuantParams, lead: list[int], amx: bool):
    """(TE function of the uint8 input, constant args, whether AMX reads the input as a [rows, K] view) for the
    int8 kernel of one site: dot products, then dequantize. The input's quantize is a kernel of its own, so that
    it fuses into its producer's epilogue. AMX where the target has it and the site suits it
    (dot_product.amx_layout), else the vector instruction, which reads the activations in place."""
    group = dot_product.VNNI.group
    quantized, weight_scale = quantize_weight(weight)
    column_sums = quantized.astype(np.int64).reshape(-1, quantized.shape[-1]).sum(axis=0)
    correction = (params.zero_point * column_sums).astype(np.int32)
    scale = (np.float32(params.scale) * weight_scale).astype(np.float32)
    use_amx, in_place = dot_product.amx_layout(kind, attrs, weight.shape, lead, group) if amx else (False, False)
    packed = (dot_product.pack_for_amx if use_amx else dot_product.pack_weight)(quantized, group)

    def compute(q, packed_weight, correction_const, scale_const):
        if use_amx:
            sums = dot_product.amx_sums(q, packed_weight, kind, attrs, weight.shape[:2], lead, "int32", in_place,
                                        params.zero_point)
        elif kind == "matmul":
            sums = dot_product.dot_matmul(q, packed_weight, "int32")
        else:
            sums = dot_product.dot_conv2d(q, packed_weight, *dot_product.conv_geometry(attrs), "int32",
                                          pad_value=params.zero_point)
        return dot_product.dequantize_sums(sums, correction_const, scale_const)

    return compute, [relax.const(packed), relax.const(correction), relax.const(scale)], in_place


def _depthwise_kernel(attrs, weight: np.ndarray, params: QuantParams):
    """(TE function of the uint8 input, constant args) of a depthwise site: float32 arithmetic on the uint8
    input (dot_product.depthwise_u8), so that the convolution before it writes a quarter of the bytes."""
    scaled = (weight[:, :, 0, :].astype(np.float64) * params.scale).astype(np.float32)
    offset = (params.zero_point * scaled.astype(np.float64).sum(axis=(0, 1))).astype(np.float32)

    def compute(q, weight_const, offset_const):
        return dot_product.depthwise_u8(q, weight_const, offset_const, *dot_product.conv_geometry(attrs),
                                        params.zero_point)

    return compute, [relax.const(scaled), relax.const(offset)]


@mutator
class _Int8Lowerer(PyExprMutator):
    """Replace each site that has quantization parameters (by index: sites() order) by its int8 kernel."""

    def __init__(self, mod, params: dict[int, QuantParams], skip: frozenset[int], amx: bool):
        super().__init__(mod)
        self.params, self.skip, self.amx, self.index = params, skip, amx, -1

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        kind = site_kind(call)
        if kind is None:
            return call
        self.index += 1
        data = call.args[0]
        given = fake_quant.match_input(data, self.lookup_binding)
        params = self.params.get(self.index)
        if given is not None:
            data, params, axes = given
            if axes is not None:
                data = self.builder_.emit(relax.op.permute_dims(data, axes))
        if params is None or self.index in self.skip or params.qmax - params.qmin > 255:
            return call
        params = params.as_uint8()
        quantized = self.builder_.emit(self.builder_.call_te(
            dot_product.quantize_input, data, params.scale, params.zero_point, params.qmin, params.qmax,
            primfunc_name_hint="quantize"))
        weight = const_value(call.args[1])
        if kind == "depthwise":
            compute, constants = _depthwise_kernel(call.attrs, weight, params)
            return self.builder_.call_te(compute, quantized, *constants, primfunc_name_hint="u8_depthwise",
                                         primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})
        lead = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in call.ty.shape.values[:-1]]
        # AMX tiles the rows, so it needs their count; a symbolic batch keeps the VNNI kernel
        compute, constants, direct = _int8_kernel(kind, call.attrs, weight, params, lead,
                                                  self.amx and None not in lead)
        if direct:  # a view, no copy
            quantized = self.builder_.emit(relax.op.reshape(quantized, [int(np.prod(lead)), weight.shape[-2]]))
        return self.builder_.call_te(compute, quantized, *constants, primfunc_name_hint=f"int8_{kind}",
                                     primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})


def model_params(mod: tvm.IRModule) -> dict[int, QuantParams]:
    """The sites whose input is already fake-quantized (a QDQ model), with the model's parameters."""
    lookup = _binding_lookup(mod)
    found = {}
    for index, call in enumerate(sites(mod)):
        given = fake_quant.match_input(call.args[0], lookup)
        if given is not None:
            found[index] = given[1]
    return found


def _binding_lookup(mod: tvm.IRModule):
    bound = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                bound[binding.var] = binding.value
    return bound.get


def lower_int8(params: dict[int, QuantParams], skip: frozenset[int] = frozenset(),
               amx: bool = False) -> tvm.transform.Pass:
    """kiln.QuantizeInt8: the sites with PARAMS (and those the model quantizes itself) as int8 kernels, except
    the indices in SKIP, which stay float32 (the accuracy fallback); AMX: the target has AMX tiles."""
    return mutator_pass(PASS_NAME, functools.partial(_Int8Lowerer, params=params, skip=skip, amx=amx))


def with_site_inputs(mod: tvm.IRModule, indices: list[int]) -> tvm.IRModule:
    """MOD whose `main` also returns the inputs of the sites at INDICES, after its own outputs (a tuple:
    (outputs, input_0, input_1, ...)): the calibration build."""
    mod = relax.transform.ToNonDataflow()(mod)
    func = mod["main"]
    calls = sites(mod)
    wanted = [calls[i].args[0] for i in indices]
    body = func.body
    new_body = relax.BlockBuilder(mod).normalize(relax.SeqExpr(body.blocks, relax.Tuple([body.body, *wanted])))
    new_func = relax.Function(func.params, new_body, None, func.is_pure, func.attrs)
    mod = tvm.IRModule({**{gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}}, attrs=mod.attrs)
    mod["main"] = new_func
    return relax.transform.ConvertToDataflow()(mod)


@dataclass
class Accuracy:
    """Agreement of the quantized model with float32 on the hold-back samples."""

    samples: int
    top1_agreement: float | None  # classifiers (outputs [batch, classes]) only
    cosine_similarity: float  # the lowest over samples and outputs
    max_abs_error: float

    @property
    def drop(self) -> float:
        """The figure --max-accuracy-drop bounds: 1 - top-1 agreement for classifiers, else 1 - cosine."""
        return 1.0 - (self.top1_agreement if self.top1_agreement is not None else self.cosine_similarity)

    def to_json(self) -> dict:
        return {"samples": self.samples, "top1_agreement": self.top1_agreement,
                "cosine_similarity": round(self.cosine_similarity, 6), "max_abs_error": float(self.max_abs_error),
                "drop": round(self.drop, 6)}


def accuracy(reference: list[list[np.ndarray]], quantized: list[list[np.ndarray]]) -> Accuracy:
    """Compare per-sample output lists of the float32 model (REFERENCE) and the quantized one."""
    cosines, errors, agree, classified = [], [0.0], 0, 0
    for ref_outputs, q_outputs in zip(reference, quantized):
        for ref, out in zip(ref_outputs, q_outputs):
            a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
            norm = np.linalg.norm(a) * np.linalg.norm(b)
            cosines.append(float(a @ b / norm) if norm else float(np.array_equal(a, b)))
            errors.append(float(np.abs(a - b).max()) if a.size else 0.0)
        first, first_q = ref_outputs[0], q_outputs[0]
        if first.ndim == 2 and first.shape[1] > 1 and np.issubdtype(first.dtype, np.floating):
            classified += first.shape[0]
            agree += int(np.sum(first.argmax(axis=1) == first_q.argmax(axis=1)))
    return Accuracy(len(reference), agree / classified if classified else None, min(cosines, default=1.0),
                    max(errors))
