"""kiln.RowSoftmax: a float32 softmax over the last axis as Kiln's row kernel (compiler/kernels/softmax.py).

Attention's softmax over the scores is the one large reduction of a transformer: TVM's four-stage softmax under
dlight's schedule ran Whisper-tiny's 6 x 1500 x 1500 scores at 22 ms a layer, ONNX Runtime at under 3. The row
kernel does it in three passes over a row held in L1, in vectors, with no row width that falls off to scalar code.

In: the graph before FastMathTransform (which would make the softmax TVM's fast_softmax). Out: each float32
softmax over its last axis with static shape a call_tir of the row kernel; other softmaxes (another axis, symbolic shapes, other types) stay TVM's.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels.softmax import row_softmax
from .relax_util import op_name, rewrite_relax_functions


def _static_dims(ty) -> list[int] | None:
    shape = getattr(ty, "shape", None)
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return [int(d) for d in shape.values]


def _last_axis(call, ndim: int) -> bool:
    return int(call.attrs.axis) in (-1, ndim - 1)


def row_softmax_pass(lanes: int) -> tvm.transform.Pass:
    """The pass (see the module docstring), for a target whose float32 vectors have LANES lanes."""

    @mutator
    class _SoftmaxRewriter(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.kernels: dict[tuple[int, ...], tvm.ir.GlobalVar] = {}  # one kernel per shape

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if op_name(call) != "relax.nn.softmax" or getattr(call.args[0].ty, "dtype", None) != "float32":
                return call
            dims = _static_dims(call.args[0].ty)
            if not dims or not _last_axis(call, len(dims)) or 0 in dims:
                return call
            key = tuple(dims)
            if key not in self.kernels:
                self.kernels[key] = self.builder_.add_func(row_softmax(dims, lanes), "row_softmax")
            return relax.call_tir(self.kernels[key], [call.args[0]], call.ty)

    @tvm.transform.module_pass(opt_level=0, name="kiln.RowSoftmax")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_relax_functions(mod, _SoftmaxRewriter)

    return _pass
