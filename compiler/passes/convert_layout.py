"""kiln.ConvertLayout: convolutions to NHWC activations with HWIO weights, on modules that have a convolution.

In: the simplified graph in the model's layout (NCHW / OIHW). Out: NHWC / HWIO convolutions with transposes at
the model's borders only (the weights' transposes are folded by the kiln.FoldConstant after it). Where TVM's
layout rules fail on the graph, it stays in its own layout, with a warning: a valid model must still compile.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from .relax_util import op_name

log = logging.getLogger(__name__)

# Convolutions to NHWC / HWIO; transposed convolutions kept in the one layout TVM can lower (TOPI's
# conv2d_transpose is NCHW / IOHW only: left to layout propagation, PP-OCR's detector got an NHWC one that
# LegalizeOps leaves as it is and the VM cannot run).
DESIRED_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


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
    try:
        return relax.transform.ConvertLayout(DESIRED_LAYOUTS)(mod)
    except Exception as err:  # noqa: BLE001 - TVM's layout inference raises its own error types
        # A graph TVM's layout rules cannot take is still a valid graph: it compiles in its own layout (slower
        # convolutions) rather than not at all.
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        log.warning("layout conversion failed (%s); the convolutions keep the model's layout (NCHW), which Kiln's "
                    "schedules run slower: please report the model", first)
        return mod

