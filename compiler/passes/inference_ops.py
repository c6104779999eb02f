"""kiln.InferenceOps: training-time and multi-input forms the ONNX importer emits, in the plain ops an inference
graph means, before layout conversion (whose inference rules fail on them).

In: the imported graph. Out: the same graph with
- dropout(x)[0] -> x and dropout(x)[1] (the mask) -> all true: inference runs no dropout, and the tuple it
  returns stopped ConvertLayout ("Expected nested to match tuple": the onnx zoo's SqueezeNet, Inception v1);
- sum(stack([a, b, ...], axis), axis) -> a + b + ... (ONNX Sum): the 5-D stack stopped ConvertLayout ("Invalid
  SLayout: can't find S in source layout ABCDE": the onnx zoo's ResNet-50, ShuffleNet), and adds fuse.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions


@mutator
class _InferenceRewriter(PyExprMutator):
    def visit_tuple_getitem_(self, item):
        item = self.visit_expr_post_order(item)
        source = self.lookup_binding(item.tuple_value) if isinstance(item.tuple_value, relax.Var) else item.tuple_value
        if op_name(source) != "relax.nn.dropout":
            return item
        data = source.args[0]
        if item.index == 0:
            return data
        return relax.op.full_like(data, relax.const(True, "bool"), dtype="bool")

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.sum" or call.attrs.axis is None or len(call.attrs.axis) != 1 or call.attrs.keepdims:
            return call
        stack = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if op_name(stack) != "relax.stack" or not isinstance(stack.args[0], relax.Tuple) \
                or int(stack.attrs.axis) != int(call.attrs.axis[0]):
            return call
        pieces = list(stack.args[0].fields)
        total = pieces[0]
        for piece in pieces[1:]:
            total = self.builder_.emit(relax.op.add(total, piece))
        return total if len(pieces) > 1 else relax.op.add(total, relax.op.zeros_like(total))


@tvm.transform.module_pass(opt_level=0, name="kiln.InferenceOps")
def inference_ops(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Dropout as the identity, and ONNX Sum as a chain of adds (see the module docstring)."""
    return rewrite_relax_functions(mod, _InferenceRewriter)
