"""kiln.Conv1DAsConv2D: a 1-D convolution as a 2-D one over a row of height 1.

TVM's conv1d has no schedule of Kiln's (nor a packed compute, nor layout conversion): Whisper's stem, a stride-2
conv1d of 384 channels over 3000 frames, ran at 2.6 GFLOP/s (515 ms of an 805 ms encoder run). As a conv2d of
height 1 it gets what every convolution gets: NHWC layout, packed weights, the register-tiled schedules.

In: the simplified graph, before layout conversion (NCW / OIW conv1d as imported). Out: expand_dims -> conv2d
(NCHW / OIHW, height 1) -> squeeze in each such conv1d's place; the weights' expand_dims fold.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions


@mutator
class _Conv1DRewriter(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.nn.conv1d":
            return call
        attrs = call.attrs
        if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCW", "OIW", "NCW"):
            return call
        left, right = (int(p) for p in attrs.padding)
        data = self.builder_.emit(relax.op.expand_dims(call.args[0], axis=2))
        weight = self.builder_.emit(relax.op.expand_dims(call.args[1], axis=2))
        conv = self.builder_.emit(relax.op.nn.conv2d(
            data, weight, strides=[1, int(attrs.strides[0])], padding=[0, left, 0, right],
            dilation=[1, int(attrs.dilation[0])], groups=int(attrs.groups), data_layout="NCHW",
            kernel_layout="OIHW", out_layout="NCHW", out_dtype=attrs.out_dtype))
        return relax.op.squeeze(conv, axis=[2])


@tvm.transform.module_pass(opt_level=0, name="kiln.Conv1DAsConv2D")
def conv1d_as_conv2d(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """NCW conv1d as height-1 NCHW conv2d (see the module docstring)."""
    return rewrite_relax_functions(mod, _Conv1DRewriter)
