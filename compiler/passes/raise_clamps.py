"""kiln.RaiseClamps: the TIR max / min-with-a-scalar kernels TVM's ONNX importer emits for Clip (ReLU6) turned
back into Relax ops, which layout conversion and fusion understand.

In: the imported graph. Out: the same graph with R.maximum / R.minimum where those call_tir kernels were.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import const_value, kernels_by_name, only_block, op_name, rewrite_relax_functions

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
