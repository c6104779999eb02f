"""A kernel and the kernel that alone reads its output, fused into one where a schedule rule takes the pair: what
kiln.FuseRowStrips and kiln.FuseInputTransposes share."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..schedules.contraction import buffer_bytes
from .relax_util import fusable, fuse_pair, kernels_by_name, op_name, single_use_vars

_LLVM = {"kind": "llvm"}


def _static(func: tirx.PrimFunc) -> bool:
    """Whether every parameter of FUNC is a buffer of static shape (fuse_pair builds its types from them; a
    kernel of a symbolic shape also takes the shape's variables as scalar parameters)."""
    return all(isinstance(param.ty, tirx.BufferType) and buffer_bytes(param) is not None for param in func.params)


@mutator
class PairFuser(PyExprMutator):
    """Rewrites y = call_tir(first, a); z = call_tir(second, (y, b...)) into z = call_tir(first+second, (a, b...))
    where ACCEPTS(first, second) holds for the two kernels and RULE schedules the fused one; y is then dead
    (DeadCodeElimination drops it)."""

    def __init__(self, mod: tvm.IRModule, rule, accepts: Callable[[tirx.PrimFunc, tirx.PrimFunc], bool]):
        super().__init__(mod)
        self.kernels = kernels_by_name(mod)
        self.rule = rule
        self.accepts = accepts
        self.fused: dict[tuple[str, str], tvm.ir.GlobalVar | None] = {}
        self.single_use = single_use_vars(mod)

    def visit_call_(self, call):
        middle = call.args[1].fields[0] if op_name(call) == "relax.call_tir" and len(call.args) == 2 \
            and isinstance(call.args[1], relax.Tuple) and call.args[1].fields else None
        # the rule only needs the pair's first input to be used once (by this call), as its first argument
        candidate = isinstance(middle, relax.DataflowVar) and middle in self.single_use \
            and sum(1 for arg in call.args[1].fields if arg.same_as(middle)) == 1
        call = self.visit_expr_post_order(call)
        if not candidate:
            return call
        producer = self.lookup_binding(call.args[1].fields[0])
        if op_name(producer) != "relax.call_tir" or len(producer.args) != 2:
            return call
        kernel = self._fused(producer.args[0], call.args[0])
        if kernel is None:
            return call
        args = list(producer.args[1].fields) + list(call.args[1].fields[1:])
        return relax.call_tir(kernel, args, call.ty)

    def _fused(self, first: tvm.ir.GlobalVar, second: tvm.ir.GlobalVar) -> tvm.ir.GlobalVar | None:
        key = (first.name_hint, second.name_hint)
        if key not in self.fused:
            self.fused[key] = None
            # a kernel fused here already (the first of a pair is not in the module's kernels) is left as it is
            funcs = self.kernels.get(first.name_hint), self.kernels.get(second.name_hint)
            if all(funcs) and all(map(fusable, funcs)) and all(map(_static, funcs)) and self.accepts(*funcs):
                kernel = fuse_pair(*funcs)
                if self.rule.apply(kernel, tvm.target.Target(_LLVM), False) is not None:
                    name = first.name_hint + "_" + second.name_hint.removeprefix("fused_")
                    self.fused[key] = self.builder_.add_func(kernel, name)
        return self.fused[key]
