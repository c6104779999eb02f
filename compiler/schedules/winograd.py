"""Schedule of the Winograd transforms (compiler/winograd.py): one tile per parallel step, the tile positions
unrolled (so each position's select chain folds to its own few terms), channels vectorized."""

from __future__ import annotations

from tvm import s_tir

from ..winograd import INPUT_BLOCK, OUTPUT_BLOCK, TILE
from .common import KilnRule, const_extent, fuse_epilogue, schedule_injective, vector_factor


class WinogradTransform(KilnRule):
    """The input transform (with its padding) and the output transform (with the bias / activation / residual
    tail fused into it) of a Winograd convolution."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        names = [sch.get(b).name_hint for b in blocks]
        if INPUT_BLOCK in names:
            main = names.index(INPUT_BLOCK)
            if main != len(blocks) - 1:
                return None
            for block in blocks[:main]:  # the padding, materialized: every input is read by up to 4 tiles
                schedule_injective(sch, block, self.lanes)
            return self._input(sch, blocks[main])
        if OUTPUT_BLOCK in names and names.index(OUTPUT_BLOCK) == 0:
            fuse_epilogue(sch, blocks[0], blocks[1:], self.lanes)
            return self._output(sch, blocks[0])
        return None

    def _input(self, sch: s_tir.Schedule, block) -> s_tir.Schedule:
        # V[ab, n, t, c]: per tile and channel vector, all 36 positions from one 6 x 6 patch
        position, batch, tile, channel = sch.get_loops(block)
        lanes = vector_factor(const_extent(sch, channel), self.lanes)
        channel_outer, channel_inner = sch.split(channel, [None, lanes])
        sch.reorder(batch, tile, channel_outer, position, channel_inner)
        sch.parallel(sch.fuse(tile, channel_outer))
        sch.unroll(position)
        sch.vectorize(channel_inner)
        return sch

    def _output(self, sch: s_tir.Schedule, block) -> s_tir.Schedule:
        # Y[n, h, w, k]: per tile and channel vector, its 4 x 4 outputs from the 36 products
        batch, height, width, channel = sch.get_loops(block)
        lanes = vector_factor(const_extent(sch, channel), self.lanes)
        tile_row, row = sch.split(height, [None, TILE])
        tile_col, col = sch.split(width, [None, TILE])
        channel_outer, channel_inner = sch.split(channel, [None, lanes])
        sch.reorder(batch, tile_row, tile_col, channel_outer, row, col, channel_inner)
        sch.parallel(sch.fuse(tile_row, tile_col, channel_outer))
        sch.unroll(row)
        sch.unroll(col)
        sch.vectorize(channel_inner)
        return sch
