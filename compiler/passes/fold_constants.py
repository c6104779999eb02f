"""kiln.FoldConstant: Relax's FoldConstant, kept only where its result is well formed.

In: any Relax module. Out: the module with constant subexpressions computed at compile time (or unchanged).
"""

from __future__ import annotations

import tvm
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="kiln.FoldConstant")
def fold_constants(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Relax's FoldConstant, kept only when its result is well formed: on a dynamic Slice it leaves a call to a
    shape function it never adds to the module ('no definition of shape_func'); the graph then stays unfolded."""
    folded = relax.transform.FoldConstant()(mod)
    try:
        relax.analysis.well_formed(folded)  # raises (it returns nothing) on an undefined GlobalVar
    except Exception:  # noqa: BLE001 - TVM's check raises its own error types
        return mod
    return folded
