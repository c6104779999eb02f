"""Default CPU schedule for kernels without reductions (elementwise, broadcast, transpose, reshape, padding)."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info

from .common import KilnRule, root_blocks, schedule_injective


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
            schedule_injective(sch, block, self.lanes)
        return sch
