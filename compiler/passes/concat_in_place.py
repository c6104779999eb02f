"""kiln.ConcatInPlace: a concatenation along the channels of two kernels' outputs (SqueezeNet's fire modules) done by
the two kernels themselves. The first writes its channels straight into the concatenation's buffer, the second
writes its own into that buffer in place (call_tir_inplace), and the copy kernel and its pass over memory go away.

    a = call_tir(ka, args_a); b = call_tir(kb, args_b); y = call_tir(concatenate, (a, b))
 -> y0 = call_tir(ka + place(offset 0), args_a); y = call_tir_inplace(kb + place(offset Ca), (*args_b, y0))
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T

from ..schedules import tuning_space
from .relax_util import fusable, fuse_pair, kernels_by_name, mutator_pass, only_block, op_name, single_use_vars


def place_kernel(shape, total: int, offset: int) -> tirx.PrimFunc:
    """out[..., OFFSET + c] = a[..., c] for a 4-D float32 A of SHAPE and an OUT of TOTAL channels; the other
    channels of OUT are left as they are."""
    n, h, w, c = (int(d) for d in shape)

    @T.prim_func(private=True, s_tir=True)
    def place(a: T.Buffer((T.int64(n), T.int64(h), T.int64(w), T.int64(c)), "float32"),
              out: T.Buffer((T.int64(n), T.int64(h), T.int64(w), T.int64(total)), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i0, i1, i2, i3 in T.grid(T.int64(n), T.int64(h), T.int64(w), T.int64(c)):
            with T.sblock("place"):
                v0, v1, v2, v3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                out[v0, v1, v2, v3 + T.int64(offset)] = a[v0, v1, v2, v3]

    return place


def concat_channels(func) -> tuple[int, int] | None:
    """(channels of the first input, of the second) when FUNC is exactly a float32 concatenation of two 4-D
    tensors along the last axis (one block writing out[..., c] from a[..., c] or b[..., c - Ca]); else None."""
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
        return None
    a, b, out = func.params
    shapes = [[int(d) if isinstance(d, tirx.IntImm) else None for d in p.shape] for p in (a, b, out)]
    if any(len(s) != 4 or None in s or str(p.dtype) != "float32" for s, p in zip(shapes, (a, b, out))) \
            or shapes[0][:3] != shapes[2][:3] or shapes[1][:3] != shapes[2][:3] \
            or shapes[0][3] + shapes[1][3] != shapes[2][3]:
        return None
    block = only_block(func)
    if block is None or len(block.reads) != 2:
        return None
    last = block.iter_vars[3].var
    offsets = {}
    for region in block.reads:
        index = region.region[3].min
        coeff = tvm.sym.detect_linear_equation(index, [last])
        if not coeff or not isinstance(coeff[0], tirx.IntImm) or int(coeff[0]) != 1:
            return None
        offsets[0 if region.source.same_as(a) else 1 if region.source.same_as(b) else 2] = int(coeff[1])
    if offsets != {0: 0, 1: -shapes[0][3]}:
        return None
    return shapes[0][3], shapes[1][3]


@mutator
class _ConcatPlacer(PyExprMutator):
    """Rewrites a channel concatenation of two single-use kernel outputs (see the module docstring), where Kiln's
    rules schedule both new kernels."""

    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.kernels = kernels_by_name(mod)
        self.space = tuning_space(lanes)
        self.single_use = single_use_vars(mod)
        self.placed: dict[tuple[str, int, int], tvm.ir.GlobalVar | None] = {}

    def visit_call_(self, call):
        pieces = self._pieces(call)
        call = self.visit_expr_post_order(call)
        if pieces is None:
            return call
        producers = [self.lookup_binding(arg) for arg in call.args[1].fields]
        if any(op_name(p) != "relax.call_tir" or len(p.args) != 2 for p in producers):
            return call
        total = sum(pieces)
        first = self._placed(producers[0].args[0], total, 0)
        second = self._placed(producers[1].args[0], total, pieces[0])
        if first is None or second is None:
            return call
        wide = self.builder_.emit(relax.call_tir(first, list(producers[0].args[1].fields), call.ty))
        args = list(producers[1].args[1].fields)
        return relax.call_tir_inplace(second, args + [wide], [len(args)], call.ty)

    def _pieces(self, call) -> tuple[int, int] | None:
        if op_name(call) != "relax.call_tir" or len(call.args) != 2 or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return None
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        if len(args) != 2 or args[0].same_as(args[1]) \
                or not all(isinstance(a, relax.DataflowVar) and a in self.single_use for a in args):
            return None
        return concat_channels(self.kernels.get(call.args[0].name_hint))

    def _placed(self, kernel: tvm.ir.GlobalVar, total: int, offset: int) -> tvm.ir.GlobalVar | None:
        """KERNEL writing its output into channels OFFSET.. of a TOTAL-channel buffer (in place unless OFFSET is
        0), added to the module; None when it is not one of the module's kernels or no Kiln rule schedules it."""
        key = (kernel.name_hint, total, offset)
        if key not in self.placed:
            self.placed[key] = None
            func = self.kernels.get(kernel.name_hint)
            if func is not None and fusable(func) and len(func.params[-1].shape) == 4 \
                    and str(func.params[-1].dtype) == "float32":
                fused = fuse_pair(func, place_kernel(func.params[-1].shape, total, offset), in_place=offset > 0)
                if self.space(tvm.s_tir.Schedule(tvm.IRModule({"main": fused}))):
                    name = f"{kernel.name_hint}_into{total}" + (f"_at{offset}" if offset else "")
                    self.placed[key] = self.builder_.add_func(fused, name)
        return self.placed[key]


def concat_in_place(lanes: int) -> tvm.transform.Pass:
    """kiln.ConcatInPlace for a target of LANES fp32 lanes (see the module docstring)."""
    return mutator_pass("kiln.ConcatInPlace", lambda mod: _ConcatPlacer(mod, lanes))
