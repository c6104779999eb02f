"""--precision bf16: convolutions and matmuls with constant weights run with bf16 weights and activations and
float32 sums, on AMX (tdpbf16ps). The activations are rounded to bf16 by a kernel of their own, which fuses into
its producer's epilogue; everything else stays float32. Sites whose shape does not suit AMX tiles
(dot_product.amx_layout) stay float32: there is no vector bf16 path (see dot_product.BF16)."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import dot_product
from ..passes.relax_util import OUT_ELEMWISE_FUSABLE, const_value, mutator_pass
from .int8 import site_kind

PASS_NAME = "kiln.ToBF16"
PRECISIONS = ("fp32", "bf16")


@mutator
class _BF16Lowerer(PyExprMutator):
    def __init__(self, mod, counts: dict):
        super().__init__(mod)
        self.counts = counts

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        kind = site_kind(call)
        if kind is None or kind == "depthwise":  # (float32 weights; no bf16 depthwise kernel)
            return call
        self.counts["sites"] += 1
        weight = const_value(call.args[1])
        if not all(isinstance(d, tvm.tirx.IntImm) for d in call.ty.shape.values[:-1]):
            return call  # AMX tiles the rows, so it needs their count (a symbolic batch stays float32)
        lead = [int(d) for d in call.ty.shape.values[:-1]]
        group = dot_product.BF16.group
        suits, in_place = dot_product.amx_layout(kind, call.attrs, weight.shape, lead, group)
        if not suits:
            return call
        self.counts["bf16_sites"] += 1
        bits = self.builder_.emit(self.builder_.call_te(dot_product.bf16_bits, call.args[0],
                                                        primfunc_name_hint="to_bf16"))
        if in_place:  # a view, no copy
            bits = self.builder_.emit(relax.op.reshape(bits, [int(np.prod(lead)), weight.shape[-2]]))
        packed = relax.const(dot_product.pack_for_amx(dot_product.bf16_weight(weight), group))

        def compute(data, packed_weight):
            return dot_product.amx_sums(data, packed_weight, kind, call.attrs, weight.shape[:2], lead, "float32",
                                        in_place)

        return self.builder_.call_te(compute, bits, packed, primfunc_name_hint=f"bf16_{kind}",
                                     primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})


def lower_bf16(counts: dict | None = None) -> tvm.transform.Pass:
    """kiln.ToBF16: every site AMX suits as a bf16 kernel; COUNTS (if given) receives 'sites' and 'bf16_sites'."""
    tally = counts if counts is not None else {}
    tally.update(sites=0, bf16_sites=0)
    return mutator_pass(PASS_NAME, functools.partial(_BF16Lowerer, counts=tally))
