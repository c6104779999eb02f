"""Default CPU schedule for kernels without reductions (elementwise, broadcast, transpose, reshape, padding,
concatenation)."""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info

from .common import KilnRule, const_extent, root_blocks, schedule_injective, sub_exprs, uses, vector_factor

_IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")


class Injective(KilnRule):
    """Inline every block into the last; fuse its loops, vectorize the inner run, parallelize the outer."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        if not all(get_sblock_info(sch, b).is_injective() for b in blocks):
            return None
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                pass  # a block that cannot be inlined keeps its own loop nest, scheduled below
        for block in root_blocks(sch):
            if not _schedule_piecewise(sch, block, self.lanes):
                schedule_injective(sch, block, self.lanes)
        return sch


def _calls(expr, op) -> list:
    """Every call to OP inside the TIR expression EXPR."""
    found = [expr] if isinstance(expr, tvm.ir.expr.Call) and expr.op.same_as(op) else []
    for child in sub_exprs(expr):
        found += _calls(child, op)
    return found


def _innermost_pieces(block: tirx.SBlock) -> bool:
    """True when BLOCK picks its value by the innermost axis (if_then_else on it): a concatenation along the
    channels of NHWC tensors."""
    if not block.iter_vars:  # a block of scalar work (ScatterND's update)
        return False
    last = block.iter_vars[-1].var
    value = getattr(block.body, "value", None)
    return value is not None and any(uses(call.args[0], last) for call in _calls(value, _IF_THEN_ELSE))


def _schedule_piecewise(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Schedule a concatenation along the innermost axis piece by piece: vectors as wide as every piece allows,
    and the channel loop split where the pieces meet (LoopPartition), so each piece is a plain vector copy
    instead of a per-lane choice. Measured on SqueezeNet's 55x55x(64+64): 0.018 ms against 0.147 with the
    fused schedule. Returns False (nothing done) for any other block."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if not _innermost_pieces(stmt) or len(loops) != len(stmt.iter_vars) or const_extent(sch, loops[-1]) is None:
        return False
    widths = [int(r.source.shape[-1]) for r in [*stmt.reads, *stmt.writes]
              if r.region and isinstance(r.source.shape[-1], tirx.IntImm)]
    factor = vector_factor(math.gcd(*widths), lanes) if widths else 1
    outer = [loop for loop in loops[:-1] if const_extent(sch, loop) is not None]
    if factor <= 1 or not outer or len(outer) != len(loops) - 1:
        return False
    piece, lane = sch.split(loops[-1], [None, factor])
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    sch.annotate(piece, "pragma_loop_partition_hint", 1)
    sch.vectorize(lane)
    return True
