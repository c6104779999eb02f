"""kiln.BoundIndices: every index a gather or scatter reads brought into its axis before it is used.

TVM's take, gather_elements, gather_nd, scatter_elements and scatter_nd read and write memory at the index they
are given, unchecked: a token id past the vocabulary (a client's input) or a corrupt constant index reads outside
the tensor, and the process dies (in a server: every model with it), or the compiler dies folding a constant.
Each index is wrapped as ONNX defines negatives (i + n) and then clamped to [0, n - 1], so no index can leave
its tensor; the runtime refuses out-of-range model inputs before they get here (runtime.artifact's
input_ranges). Constant indices already in range are left as they are.

In: the imported graph (before constant folding). Out: the same graph with bounded index operands.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import const_value, op_name, rewrite_relax_functions


def _dims(expr) -> list | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return list(ty.shape.values)


def _axes_read(call) -> tuple[relax.Expr, int, list[int]] | None:
    """(indices, which argument they are, the data axes they index; for the *_nd ops, one per coordinate)."""
    name, args = op_name(call), call.args
    if name == "relax.take" and str(call.attrs.mode) == "fast":
        return args[1], 1, [int(call.attrs.axis) if call.attrs.axis is not None else 0]
    if name in ("relax.gather_elements", "relax.scatter_elements"):
        return args[1], 1, [int(call.attrs.axis)]
    indices_dims = _dims(args[1]) if name in ("relax.gather_nd", "relax.scatter_nd") else None
    if indices_dims and isinstance(indices_dims[-1], tirx.IntImm):
        start = int(call.attrs.batch_dims) if name == "relax.gather_nd" else 0
        return args[1], 1, list(range(start, start + int(indices_dims[-1])))
    return None


@mutator
class _IndexBounder(PyExprMutator):
    """Gathers and scatters with indices = clip(where(i < 0, i + n, i), 0, n - 1), n the extent of each axis
    they index (a vector over the last axis for gather_nd / scatter_nd)."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        found = _axes_read(call)
        if found is None:
            return call
        indices, position, axes = found
        data_dims, dtype = _dims(call.args[0]), str(getattr(indices.ty, "dtype", ""))
        if data_dims is None or not dtype.startswith("int"):
            return call
        rank = len(data_dims)
        extents = [data_dims[a % rank] for a in axes] if rank else []
        if not extents or _in_range(indices, extents):
            return call
        emit = self.builder_.emit
        if all(isinstance(e, tirx.IntImm) for e in extents):
            n = relax.const(np.array([int(e) for e in extents], dtype) if len(axes) > 1 else int(extents[0]),
                            dtype)
        else:
            n = emit(relax.op.shape_to_tensor(relax.ShapeExpr(extents)))
            n = emit(relax.op.astype(n if len(axes) > 1 else emit(relax.op.reshape(n, [])), dtype))
        zero, one = relax.const(0, dtype), relax.const(1, dtype)
        wrapped = emit(relax.op.where(emit(relax.op.less(indices, zero)), emit(relax.op.add(indices, n)), indices))
        bounded = emit(relax.op.minimum(emit(relax.op.maximum(wrapped, zero)), emit(relax.op.subtract(n, one))))
        args = list(call.args)
        args[position] = bounded
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def _in_range(indices, extents) -> bool:
    """Whether INDICES are a constant already inside [-n, n - 1] of static EXTENTS."""
    value = const_value(indices)
    if value is None or not all(isinstance(e, tirx.IntImm) for e in extents):
        return False
    n = np.array([int(e) for e in extents]) if len(extents) > 1 else int(extents[0])
    return bool(np.all(value >= -n) and np.all(value < n))


@tvm.transform.module_pass(opt_level=0, name="kiln.BoundIndices")
def bound_indices(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Clamp every gather / scatter index into the axis it reads (the module docstring says why)."""
    return rewrite_relax_functions(mod, _IndexBounder)
