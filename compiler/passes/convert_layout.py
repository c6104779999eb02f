"""kiln.ConvertLayout: convolutions to NHWC activations with HWIO weights, on modules that have a convolution.

In: the simplified graph in the model's layout (NCHW / OIHW). Out: NHWC / HWIO convolutions with transposes at
the model's borders only (the weights' transposes are folded by the kiln.FoldConstant after it).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .relax_util import op_name


def _has_conv2d(mod: tvm.IRModule) -> bool:
    found = []

    def visit(expr):
        if op_name(expr) == "relax.nn.conv2d":
            found.append(expr)

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="kiln.ConvertLayout")
def convert_conv_layout(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """ConvertLayout to NHWC activations / HWIO weights, on modules that have a convolution. Without one it has
    nothing to gain, and TVM's layout inference fails on some ops (Erf and Max with broadcasting: 'Invalid SLayout')
    even when there is nothing to convert."""
    if not _has_conv2d(mod):
        return mod
    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)

