"""Weights out of the library: main's large constants become parameters after the model's inputs, so the runtime
can map them from the artifact (one copy in memory) instead of TVM deserializing the library's constant pool
(the library's mapped pages, a copy of its blob and the constants themselves: three copies at load).

In: the scheduled module (its constants already folded, packed and laid out for the kernels). Out: the module
whose main takes the weights as parameters (attribute `num_input` = the model's input count) and the weights as
numpy arrays, in parameter order. Constants under LIFT_BYTES stay in the library: they cost nothing worth a
parameter (each parameter is checked on every call).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..passes.relax_util import NUM_INPUT

LIFT_BYTES = 4096


@mutator
class _ConstantLifter(PyExprMutator):
    """Replaces each large constant by a parameter variable (one per distinct constant)."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.params: list[relax.Var] = []
        self.arrays: list[np.ndarray] = []
        self._lifted: dict[tvm.ir.expr.Constant, relax.Var] = {}  # by identity: a constant used twice is one weight

    def visit_generic_const_(self, const) -> relax.Expr:
        value = getattr(const, "value", None)
        if not hasattr(value, "numpy") or not isinstance(const.ty, relax.TensorType):
            return const
        if int(np.prod(value.shape, dtype=np.int64)) * np.dtype(str(value.dtype)).itemsize < LIFT_BYTES:
            return const
        if const not in self._lifted:
            self._lifted[const] = relax.Var(f"kiln_weight{len(self.params)}", const.ty)
            self.params.append(self._lifted[const])
            self.arrays.append(value.numpy())
        return self._lifted[const]


def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """MOD with main's constants of LIFT_BYTES or more as parameters after its inputs, and those constants."""
    main = mod["main"]
    lifter = _ConstantLifter(mod)
    body = lifter.visit_expr(main.body)
    if not lifter.params:
        return mod, []
    lifted = relax.Function(list(main.params) + lifter.params, body, main.ret_ty, main.is_pure, main.attrs,
                            main.span).with_attr(NUM_INPUT, len(main.params))
    out = mod.clone()  # MOD itself stays as it was (the caller's scheduled module)
    out["main"] = lifted
    return out, lifter.arrays
