"""kiln.FlattenRows: a constant-weight matmul whose activation rows lie on an outer axis ([tokens, 1, K], as
torch's nn.MultiheadAttention computes its projections, sequence first) reshaped so that the rows are the
second-last axis, the axis the register tiles span; the output reshaped back.

The contraction schedule tiles the second-last axis of the output. With [197, 1, 768] @ [768, 2304] that axis is
1: every one of the 197 tokens ran as a matrix-vector product over all of the weights, 94 ms against ONNX
Runtime's 2.2 (2-core Xeon, 2 threads); as [1, 197, 768] it is an ordinary tiled matmul. Reshapes are views.

In / out: the simplified graph; only matmuls with constant 2-D weights and static activation shapes change.
"""

from __future__ import annotations

import math

from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import linear_operands, mutator_pass

FEW_ROWS = 4  # a second-last axis shorter than this gives the register tile too few rows to work with


@mutator
class _RowFlattener(PyExprMutator):
    """matmul(x [..., r, K], W [K, N]) with r < FEW_ROWS and more rows on the outer axes: x as [1, rows, K]."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        operands = linear_operands(call)
        if operands is None or len(operands[1]) < 3 or not all(isinstance(d, tirx.IntImm) for d in operands[1]):
            return call
        weight, shape = operands
        dims = [int(d) for d in shape]
        rows = math.prod(dims[:-1])
        if dims[-2] >= FEW_ROWS or rows == dims[-2]:
            return call
        flat = self.builder_.emit(relax.op.reshape(call.args[0], [1, rows, dims[-1]]))
        product = self.builder_.emit(relax.Call(call.op, [flat, call.args[1]], call.attrs))
        return relax.op.reshape(product, [*dims[:-1], int(weight.shape[-1])])


flatten_rows = mutator_pass("kiln.FlattenRows", _RowFlattener)
