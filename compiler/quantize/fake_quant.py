"""Fake quantization in the float graph: the one form in which Kiln marks "this tensor is quantized here".

    fake_quant(x) = (min(max(round(x / scale) + zero_point, qmin), qmax) - zero_point) * scale

built from plain Relax ops, which every graph pass (layout conversion included) understands. Both ways into int8
produce it: Kiln's calibration inserts it in front of each quantizable convolution / matmul, and kiln.LowerQDQ
turns the QuantizeLinear -> DequantizeLinear pairs of a model quantized by ONNX Runtime's tools into it. The
int8 lowering (quantization.py) then finds it with match() in front of a convolution or matmul and replaces the
pair by an int8 kernel; where no int8 kernel consumes it, it runs as what it is (float math with the rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..passes.relax_util import const_value, op_name, rewrite_relax_functions


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: real = (q - zero_point) * scale, q in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int = 0
    qmax: int = 255

    def as_uint8(self) -> QuantParams:
        """The same grid on uint8 (an int8 grid shifted by 128): what the VNNI instruction takes."""
        shift = 0 if self.qmin >= 0 else 128
        return QuantParams(self.scale, self.zero_point + shift, self.qmin + shift, self.qmax + shift)

    @staticmethod
    def from_range(low: float, high: float) -> QuantParams:
        """uint8 parameters whose grid covers [LOW, HIGH] (widened to include 0, which must be exact)."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        scale = (high - low) / 255.0 if high > low else 1.0
        zero_point = int(np.clip(round(-low / scale), 0, 255))
        return QuantParams(scale, zero_point)


def build(x: relax.Expr, params: QuantParams) -> relax.Expr:
    """The fake-quant chain of X (an expression; emit it through a BlockBuilder)."""
    def scalar(value) -> relax.Constant:
        return relax.const(np.float32(value), "float32")

    scaled = relax.op.round(relax.op.divide(x, scalar(params.scale)))
    shifted = relax.op.add(scaled, scalar(params.zero_point))
    clamped = relax.op.minimum(relax.op.maximum(shifted, scalar(params.qmin)), scalar(params.qmax))
    return relax.op.multiply(relax.op.subtract(clamped, scalar(params.zero_point)), scalar(params.scale))


def _scalar(expr) -> float | None:
    value = const_value(expr)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def match(expr: relax.Expr, lookup: Callable) -> tuple[relax.Expr, QuantParams] | None:
    """(x, params) when EXPR is build(x, params) (LOOKUP: var -> its bound value, or None), else None."""
    steps = ("relax.multiply", "relax.subtract", "relax.minimum", "relax.maximum", "relax.add", "relax.round",
             "relax.divide")
    found = []
    for step in steps:
        call = lookup(expr) if isinstance(expr, relax.Var) else expr
        if op_name(call) != step:
            return None
        if step == "relax.round":
            expr = call.args[0]
            continue
        constant = _scalar(call.args[1])
        if constant is None:
            return None
        found.append(constant)
        expr = call.args[0]
    scale, zero, qmax, qmin, zero_again, scale_again = found
    if scale != scale_again or zero != zero_again or scale <= 0:
        return None
    return expr, QuantParams(scale, int(round(zero)), int(qmin), int(qmax))


def match_input(expr: relax.Expr, lookup: Callable) -> tuple[relax.Expr, QuantParams, list | None] | None:
    """(x, params, axes) when EXPR is build(x, params), or permute_dims(build(x, params), axes) (the transpose
    layout conversion leaves at the model's border; it commutes with the elementwise chain), else None."""
    found = match(expr, lookup)
    if found is not None:
        return found[0], found[1], None
    producer = lookup(expr) if isinstance(expr, relax.Var) else expr
    if op_name(producer) != "relax.permute_dims" or producer.attrs.axes is None:
        return None
    found = match(producer.args[0], lookup)
    return (found[0], found[1], [int(a) for a in producer.attrs.axes]) if found is not None else None


@mutator
class _QDQLowerer(PyExprMutator):
    """dequantize(quantize(x, s, z), s, z) with one scale and zero point -> build(x, (s, z))."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.dequantize" or not isinstance(call.args[0], relax.Var):
            return call
        quantize = self.lookup_binding(call.args[0])
        if op_name(quantize) != "relax.quantize":
            return call
        scale, zero = _scalar(quantize.args[1]), _scalar(quantize.args[2])
        if None in (scale, zero) or (scale, zero) != (_scalar(call.args[1]), _scalar(call.args[2])):
            return call
        dtype = str(quantize.attrs.out_dtype)
        if dtype not in ("uint8", "int8"):
            return call
        info = np.iinfo(dtype)
        return build(quantize.args[0], QuantParams(scale, int(zero), int(info.min), int(info.max)))


@tvm.transform.module_pass(opt_level=0, name="kiln.LowerQDQ")
def lower_qdq(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Turn the 8-bit QuantizeLinear -> DequantizeLinear pairs of a QDQ model into fake-quant chains (module doc)."""
    return rewrite_relax_functions(mod, _QDQLowerer)
