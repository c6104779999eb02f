"""kiln.StaticShapeTensors: shape values whose every dim is known, turned into int64 constants where the graph
reads them as tensors.

TVM's importer keeps int64 tensors computed from shapes as shape values (R.shape); a ConstantOfShape of such a
value, concatenated to another, can hold hundreds of thousands of entries, and lowering shape_to_tensor of one
that long overflows the stack (the compiler dies). A constant is what such a tensor is.

In: the imported graph. Out: the same graph with shape_to_tensor of fully static shapes as constants.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions


@mutator
class _ShapeTensorFolder(PyExprMutator):
    """shape_to_tensor(s) -> the int64 constant of s, where every dim of s is a number."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.shape_to_tensor":
            return call
        ty = call.args[0].ty
        values = getattr(ty, "values", None) if isinstance(ty, relax.ShapeType) else None
        if values is None or not all(isinstance(v, tirx.IntImm) for v in values):
            return call
        return relax.const(np.array([int(v) for v in values], np.int64), "int64")


@tvm.transform.module_pass(opt_level=0, name="kiln.StaticShapeTensors")
def static_shape_tensors(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Turn shape_to_tensor of fully static shapes into constants (the module docstring says why)."""
    return rewrite_relax_functions(mod, _ShapeTensorFolder)
