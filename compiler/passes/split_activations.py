"""kiln.SplitActivationsOverConcat: an activation after a concatenation moved onto the concatenation's pieces.

In: the simplified graph. Out: concat(relu(a), relu(b)) where relu(concat(a, b)) was, so each activation fuses
into the kernel that makes its piece and kiln.ConcatInPlace can take the concatenation.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions, single_use_vars

# Activations that commute with concatenation: f(concat(a, b)) == concat(f(a), f(b)) elementwise.
_PIECEWISE_ACTIVATIONS = ("relax.nn.relu", "relax.sigmoid", "relax.tanh")


@mutator
class _ActivationSplitter(PyExprMutator):
    """relu(concat(a, b, ...)) -> concat(relu(a), relu(b), ...) where the concatenation feeds only the activation:
    each activation then fuses into the kernel that makes its piece, and the concatenation is a plain one that
    kiln.ConcatInPlace can hand to those kernels (ShuffleNet's downsampling units)."""

    def __init__(self, mod):
        super().__init__(mod)
        self.single_use = single_use_vars(mod)

    def visit_call_(self, call):
        name = op_name(call)
        candidate = name in _PIECEWISE_ACTIVATIONS and isinstance(call.args[0], relax.DataflowVar) \
            and call.args[0] in self.single_use
        call = self.visit_expr_post_order(call)
        concat = self.lookup_binding(call.args[0]) if candidate else None
        if op_name(concat) != "relax.concat" or not isinstance(concat.args[0], relax.Tuple):
            return call
        pieces = [self.builder_.emit(relax.Call(call.op, [piece], call.attrs)) for piece in concat.args[0].fields]
        return relax.Call(concat.op, [relax.Tuple(pieces)], concat.attrs)


@tvm.transform.module_pass(opt_level=0, name="kiln.SplitActivationsOverConcat")
def split_activations_over_concat(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Move an activation after a concatenation onto each of its pieces (see _ActivationSplitter)."""
    return rewrite_relax_functions(mod, _ActivationSplitter)
