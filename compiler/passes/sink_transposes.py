"""kiln.SinkTransposes: layout round trips that layout conversion leaves around elementwise ops, taken out.

A model that permutes its own activations (ConvNeXt's NCHW <-> NHWC around each block's layer norm) or applies
per-channel constants after a convolution (PP-OCRv4's batch norms and hard-swishes) gets, in an NHWC build, an
NHWC -> NCHW transpose, the elementwise ops in NCHW, and a transpose back: each a pass over the activation, and
a kernel that keeps the ops out of the convolution's epilogue. ConvNeXt-tiny had 46 such kernels of 109,
PP-OCRv4's detector 41 of 113.

Rules, applied in one walk over the bindings:
- permute_dims(permute_dims(x, p), q) is permute_dims(x, p then q), and nothing at all where that is the identity
  (so is permute_dims(x, identity));
- an elementwise op whose tensor operands are all permute_dims(a_i, p) with the same p, or constants (permuted by
  p's inverse here), and whose output has the permuted operands' shape, is permute_dims(op(a_i...), p): the
  permute moves after the op, where the next rule may cancel it. An operand that is neither stays, and so does
  the op (moving the permute would take one more); so does an op whose permuted operand something else reads
  too (a convolution, a reduction), other than elementwise ops and the inverse permute: the old permute would
  stay beside the moved one.

In: the graph after layout conversion. Out: the same values, with fewer permute_dims (DeadCodeElimination drops
the ones left unused).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import const_value, mutator_pass, op_name, readers, static_dims

ELEMENTWISE = {f"relax.{name}" for name in (
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "clip", "sigmoid", "tanh", "exp",
    "erf", "sqrt", "rsqrt", "negative", "abs", "nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "nn.leakyrelu")}


def _axes(call) -> list[int] | None:
    """The axes of the permute_dims CALL (None: all reversed)."""
    return [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else None


def _compose(first: list[int], then: list[int]) -> list[int]:
    """The axes of permute_dims(permute_dims(x, FIRST), THEN) as one permute_dims of x."""
    return [first[axis] for axis in then]


def _inverse(axes: list[int]) -> list[int]:
    inverse = [0] * len(axes)
    for i, axis in enumerate(axes):
        inverse[axis] = i
    return inverse


@mutator
class _TransposeSinker(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.users = readers(mod)  # in the program as it came

    def _movable(self, var, axes: list[int]) -> bool:
        """Whether the permute VAR (by AXES) may move past an op: each of its readers is an elementwise op (which
        moves it too) or the inverse permute (which cancels), so no reader keeps it alive beside the moved one."""
        inverse = _inverse(axes)
        return all(op_name(user) in ELEMENTWISE or (op_name(user) == "relax.permute_dims" and _axes(user) == inverse)
                   for user in self.users.get(var, []))

    def _permuted(self, expr) -> tuple | None:
        """(a, axes) where EXPR is a variable bound to permute_dims(a, axes), else None."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if op_name(bound) != "relax.permute_dims" or _axes(bound) is None:
            return None
        return bound.args[0], _axes(bound)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name == "relax.permute_dims":
            return self._permute(call)
        if name in ELEMENTWISE:
            return self._sunk(call)
        return call

    def _permute(self, call):
        axes = _axes(call)
        if axes is None:
            return call
        inner = self._permuted(call.args[0])
        source = call.args[0]
        if inner is not None:
            source, axes = inner[0], _compose(inner[1], axes)
        if axes == list(range(len(axes))):
            return source
        return relax.op.permute_dims(source, axes) if inner is not None else call

    def _sunk(self, call):
        out_dims = static_dims(call.ty)
        args = list(call.args)
        axes, operands, moved = None, list(args), set()
        for i, arg in enumerate(args):
            permuted = self._permuted(arg)
            if permuted is not None and static_dims(arg.ty) == out_dims and axes in (None, permuted[1]) \
                    and self._movable(arg, permuted[1]):
                axes, operands[i] = permuted[1], permuted[0]
                moved.add(i)
        if axes is None or out_dims is None:
            return call
        for i, arg in enumerate(args):
            if i in moved or not isinstance(getattr(arg, "ty", None), relax.TensorType):
                continue
            value = const_value(arg)
            if value is None:
                return call  # a computed operand in the permuted layout: it would need a permute of its own
            if value.ndim:
                full = value.reshape((1,) * (len(axes) - value.ndim) + value.shape)
                operands[i] = relax.const(np.ascontiguousarray(np.transpose(full, _inverse(axes))), str(value.dtype))
        inner = self.builder_.emit(relax.Call(call.op, operands, call.attrs, call.ty_args))
        return relax.op.permute_dims(inner, axes)


def sink_transposes() -> tvm.transform.Pass:
    """kiln.SinkTransposes (see the module docstring)."""
    return mutator_pass("kiln.SinkTransposes", _TransposeSinker)
