"""Schedule of the Winograd transforms (compiler/kernels/winograd.py): one tile and channel vector per parallel
step; the tile positions unrolled, so each position's select chain folds to its own few terms; the first
separable step computed per row (input) or column (output) of the tile, right where the second step reads it."""

from __future__ import annotations

from tvm import s_tir

from ..kernels.winograd import COLUMNS_BLOCK, INPUT_BLOCK, OUTPUT_BLOCK, ROWS_BLOCK
from .common import KilnRule, const_extent, fuse_epilogue, schedule_injective, vector_factor


class WinogradTransform(KilnRule):
    """The input transform (with its padding) and the output transform (with the bias / activation / residual
    tail fused into it) of a Winograd convolution."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        names = [sch.get(b).name_hint for b in blocks]
        if names[-2:] == [ROWS_BLOCK, INPUT_BLOCK]:
            for block in blocks[:-2]:  # the padding, materialized: every input is read by up to 4 tiles
                schedule_injective(sch, block, self.lanes)
            return self._input(sch, blocks[-2], blocks[-1])
        if names[:2] == [COLUMNS_BLOCK, OUTPUT_BLOCK]:
            fuse_epilogue(sch, blocks[1], blocks[2:], self.lanes)
            return self._output(sch, blocks[0], blocks[1])
        return None

    def _input(self, sch: s_tir.Schedule, rows, block) -> s_tir.Schedule:
        # V[ab, n, t, c]: per tile and channel vector, row a of B^T d, then the 6 positions (a, b) it feeds
        position, batch, tile, channel = sch.get_loops(block)
        alpha = const_extent(sch, sch.get_loops(rows)[0])  # R[a, j, ...]: a runs over the patch's rows
        channel_outer, channel_inner = sch.split(channel, [None, self._lanes(sch, channel)])
        row, col = sch.split(position, [alpha, alpha])
        sch.reorder(batch, tile, channel_outer, row, col, channel_inner)
        sch.parallel(sch.fuse(tile, channel_outer))
        self._step_at(sch, rows, row)
        sch.unroll(row)
        sch.unroll(col)
        sch.vectorize(channel_inner)
        return sch

    def _output(self, sch: s_tir.Schedule, columns, block) -> s_tir.Schedule:
        # Y[n, h, w, k]: per tile and channel vector, column v of M A, then the 4 outputs of that column
        batch, height, width, channel = sch.get_loops(block)
        tile = const_extent(sch, sch.get_loops(columns)[1])  # C[a, v, ...]: v runs over the tile's outputs
        tile_row, row = sch.split(height, [None, tile])
        tile_col, col = sch.split(width, [None, tile])
        channel_outer, channel_inner = sch.split(channel, [None, self._lanes(sch, channel)])
        sch.reorder(batch, tile_row, tile_col, channel_outer, col, row, channel_inner)
        sch.parallel(sch.fuse(tile_row, tile_col, channel_outer))
        self._step_at(sch, columns, col)
        sch.unroll(col)
        sch.unroll(row)
        sch.vectorize(channel_inner)
        return sch

    def _lanes(self, sch: s_tir.Schedule, channel) -> int:
        return vector_factor(const_extent(sch, channel), self.lanes)

    @staticmethod
    def _step_at(sch: s_tir.Schedule, step, loop) -> None:
        """Compute the first separable STEP inside LOOP: its loops there unrolled, the channel vectorized."""
        sch.compute_at(step, loop)
        loops = sch.get_loops(step)
        depth = next(i for i, each in enumerate(loops) if sch.get(each).same_as(sch.get(loop)))
        inner = loops[depth + 1:]
        for each in inner[:-1]:
            sch.unroll(each)
        sch.vectorize(inner[-1])
