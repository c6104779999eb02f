"""kiln.ExpandPowers: x ** c with a constant c of 1, 2, 3, 4 or 0.5 as multiplications or a square root.

TVM lowers power to LLVM's pow, one scalar libm call per element that nothing vectorizes: GPT-2's tanh GELU
(0.5 x (1 + tanh(0.798 (x + 0.0447 x^3)))) took 1.8 ms a layer over 128 x 3072 values where the same kernel
without the pow takes a tenth of that. Exporters write x^2 for variances and RMS norms and x^3 for that GELU.

In: the graph after constant folding. Out: each float power whose exponent is a one-element constant of those
values rewritten; other exponents, and an exponent of more dims than the base (which would broadcast), left.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import const_value, op_name, rewrite_relax_functions


def _exponent(call) -> float | None:
    value = const_value(call.args[1])
    ndim = len(getattr(call.args[0].ty, "shape", None) or [])
    if value is None or value.size != 1 or value.ndim > ndim or not str(value.dtype).startswith("float"):
        return None
    return float(value.reshape(()))


@mutator
class _PowerExpander(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.power" or not str(getattr(call.args[0].ty, "dtype", "")).startswith("float"):
            return call
        exponent, x = _exponent(call), call.args[0]
        if exponent == 1.0:
            return x
        if exponent == 0.5:
            return relax.op.sqrt(x)
        if exponent in (2.0, 3.0, 4.0):
            square = self.builder_.emit(relax.op.multiply(x, x))
            return {2.0: square, 3.0: relax.op.multiply(square, x), 4.0: relax.op.multiply(square, square)}[exponent]
        return call


@tvm.transform.module_pass(opt_level=0, name="kiln.ExpandPowers")
def expand_powers(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Constant small powers as multiplications (see the module docstring)."""
    return rewrite_relax_functions(mod, _PowerExpander)
