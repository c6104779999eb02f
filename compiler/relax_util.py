"""Small helpers shared by Kiln's Relax graph passes."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def const_value(expr) -> np.ndarray | None:
    """The array of a Relax constant, or None when EXPR is not one."""
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy") else None


def op_name(expr) -> str:
    """The operator name of a Relax call ('relax.matmul'), or '' for anything else."""
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def rewrite_relax_functions(mod: tvm.IRModule, make_mutator) -> tvm.IRModule:
    """Run the PyExprMutator that MAKE_MUTATOR(mod) builds over every Relax function of MOD; return the result."""
    mutator = make_mutator(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def kernels_by_name(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    """MOD's TIR kernels by name (the name a call_tir's GlobalVar carries)."""
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def only_block(func: tvm.tirx.PrimFunc):
    """The block under FUNC's root block and its loop nest, when FUNC holds just one; else None."""
    root = func.body.block if hasattr(func.body, "block") else None
    inner = root.body if root is not None else None
    while isinstance(inner, tvm.tirx.For):
        inner = inner.body
    return getattr(inner, "block", None)


def mutator_pass(name: str, make_mutator) -> tvm.transform.Pass:
    """A module pass called NAME that runs the PyExprMutator MAKE_MUTATOR(mod) builds over every Relax function."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_relax_functions(mod, make_mutator)

    return _pass


def single_use_vars(mod: tvm.IRModule) -> set:
    """The dataflow variables of MOD's Relax functions that exactly one binding of their block reads."""
    found = set()
    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    found |= {var for var, users in relax.analysis.udchain(block).items() if len(users) == 1}
    return found
