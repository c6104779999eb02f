"""kiln.FuseRowStrips: a convolution kernel and the depthwise convolution kernel that alone reads its output, fused
into one kernel that computes them strip by strip (compiler/schedules/row_strips.py), where the activation between
them is larger than a core's L2 share: an inverted-residual block's expansion then never goes out to memory.
Measured on MobileNetV2: see RowStrips."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..schedules.contraction import STREAMING_BYTES, buffer_bytes
from ..schedules.row_strips import RowStrips
from .relax_util import fusable, fuse_pair, kernels_by_name, mutator_pass, op_name, single_use_vars

_LLVM = {"kind": "llvm"}


@mutator
class _StripFuser(PyExprMutator):
    """Rewrites y = call_tir(first, a); z = call_tir(second, (y, b...)) into z = call_tir(first+second, (a, b...))
    where RowStrips schedules the fused kernel; y is then dead (DeadCodeElimination drops it)."""

    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.kernels = kernels_by_name(mod)
        self.rule = RowStrips(lanes)
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
            if all(funcs) and all(map(fusable, funcs)) and (buffer_bytes(funcs[0].params[-1]) or 0) > STREAMING_BYTES:
                kernel = fuse_pair(*funcs)
                if self.rule.apply(kernel, tvm.target.Target(_LLVM), False) is not None:
                    name = first.name_hint + "_" + second.name_hint.removeprefix("fused_")
                    self.fused[key] = self.builder_.add_func(kernel, name)
        return self.fused[key]


def fuse_row_strips(lanes: int) -> tvm.transform.Pass:
    """kiln.FuseRowStrips for a target of LANES fp32 lanes (see the module docstring)."""
    return mutator_pass("kiln.FuseRowStrips", lambda mod: _StripFuser(mod, lanes))
