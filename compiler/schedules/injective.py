"""Default CPU schedule for kernels without reductions (elementwise, broadcast, transpose, reshape, padding)."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .common import declines_on_schedule_error, root_blocks, schedule_injective


class Injective(ScheduleRule):
    """Inline every block into the last; fuse its loops, vectorize the inner run, parallelize the outer."""

    def __init__(self, lanes: int):
        self.lanes = lanes

    @declines_on_schedule_error
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        if not blocks or not all(get_sblock_info(sch, b).is_injective() for b in blocks):
            return None
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                pass  # a block that cannot be inlined keeps its own loop nest, scheduled below
        for block in root_blocks(sch):
            schedule_injective(sch, block, self.lanes)
        return sch
