"""Schedule of a transpose fused with the few-terms contraction that reads it (kiln.FuseInputTransposes): a
depthwise convolution (or another kernel of few terms per output) of an NCHW tensor (a model's input), computed in
NHWC one block of channels at a time, with the block's input transposed into cache just before by register-tile
transposes (transpose_tile.py) instead of by a transpose kernel of its own.

    parallel  batch x blocks of LANES channels
      transpose   the block's input, NCHW -> NHWC              (register tiles of LANES channels x up to LANES pixels)
      rows        the block's output in register tiles of up to 14 pixels x LANES, the epilogue fused

A 5x5 stride-2 depthwise convolution over 14x14x672 (2 threads, the kernels called alone): the transpose kernel
then the convolution 0.047-0.050 ms back to back, though 0.019 and 0.014 ms each (the convolution reads what
the other core has just written); fused 0.020 ms.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from . import transpose_tile
from .common import KilnRule, const_extent, fuse_epilogue, vectorize_lanes
from .contraction import (SMALL_REDUCTION, channel_group, innermost_index_ok, is_copy, reduction_terms,
                          single_reduction, spatial_count, unroll_tile_write)
from .tiles import register_tile

def is_nchw_to_nhwc(block: tirx.SBlock) -> bool:
    """Whether BLOCK copies a 4-D buffer into another with its second axis moved last (NCHW -> NHWC), 4-byte
    elements."""
    axes = [iv.var for iv in block.iter_vars]
    value = getattr(block.body, "value", None)
    if len(axes) != 4 or not is_copy(block) or len(block.reads) != 1 \
            or str(block.writes[0].source.dtype) not in transpose_tile.DTYPES:
        return False
    stored, loaded = list(block.body.indices), list(value.indices)
    order = [axes[0], axes[3], axes[1], axes[2]]
    return all(i.same_as(a) for i, a in zip(stored, axes)) and all(i.same_as(a) for i, a in zip(loaded, order))


def tile_pixels(width: int, lanes: int) -> int | None:
    """Pixels per register-tile transpose of a row WIDTH pixels wide, into vectors of LANES channels: its largest
    divisor from 4 to LANES (a tile loads each pixel row of a channel as one vector); None when none divides it
    (a prime above LANES)."""
    return max((p for p in range(4, lanes + 1) if width % p == 0), default=None)


class TransposedInput(KilnRule):
    """A transpose and the depthwise convolution (or other few-terms kernel) that reads it, a block of channels at a
    time (see the module docstring). Its tiles are fixed, like Contraction's few-terms tile."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        if len(blocks) < 2 or not is_nchw_to_nhwc(sch.get(blocks[0])):
            return None
        reduction = single_reduction(sch, blocks)
        if reduction is None:
            return None
        transpose, main = blocks[0], blocks[reduction]
        block = sch.get(main)
        if spatial_count(block) != 4 or len(sch.get_loops(main)) != len(block.iter_vars):
            return None
        vec_var = block.iter_vars[3].var
        if channel_group(block, vec_var) is not None or not innermost_index_ok(block, vec_var):
            return None
        batch, rows, cols, channels, *reduce = sch.get_loops(main)
        row_count, col_count, chan_count = (const_extent(sch, loop) for loop in (rows, cols, channels))
        if reduction_terms(sch, reduce) > SMALL_REDUCTION or None in (row_count, col_count, chan_count):
            return None
        # one vector of channels per block: more blocks for the cores to share (96 channels make 3 blocks of two
        # vectors; a 7x7 over 56x56x96 ran 0.260 ms so, 0.158 with 6 blocks) and 14x14x672 ran 0.020 against
        # 0.022 ms with Contraction's 7 x 32 tile
        rn, width = register_tile(col_count, self.lanes, self.lanes)[0], self.lanes
        if chan_count % width or col_count % rn:
            return None
        for producer in blocks[1: reduction]:  # padding, inlined as for any few-terms kernel
            sch.compute_inline(producer)

        col_outer, col_inner = sch.split(cols, [None, rn])
        chan_outer, chan_lanes = sch.split(channels, [None, width])
        sch.reorder(batch, chan_outer, rows, col_outer, *reduce, col_inner, chan_lanes)
        # (a symbolic batch stays serial outside, as in Contraction)
        parallel = chan_outer if const_extent(sch, batch) is None else sch.fuse(batch, chan_outer)
        sch.parallel(parallel)
        write_back = fuse_epilogue(sch, main, blocks[reduction + 1:], self.lanes,
                                   sch.cache_write(main, 0, "local"))
        sch.reverse_compute_at(write_back, col_outer, preserve_unit_loops=True)
        vectorize_lanes(sch, sch.get_loops(write_back)[-1], self.lanes)
        unroll_tile_write(sch, write_back, col_outer)
        for loop in [col_inner, *reduce]:
            sch.unroll(loop)
        sch.vectorize(chan_lanes)
        if reduce:
            sch.decompose_reduction(main, reduce[0])
        sch.compute_at(transpose, parallel, preserve_unit_loops=True)
        self._transpose(sch, transpose)
        return sch

    def _transpose(self, sch: s_tir.Schedule, transpose) -> None:
        """Schedule the transpose block, computed at the parallel loop (one block of LANES channels): register
        tiles of LANES channels by tile_pixels pixels where LANES is 8 or more, else vectors of channels gathered
        (0.035 ms on the 14x14x672 convolution above)."""
        *_, pixels, channels = sch.get_loops(transpose)
        step = tile_pixels(const_extent(sch, pixels), self.lanes)
        if self.lanes < 8 or step is None:
            sch.vectorize(channels)
            return
        dtype = str(sch.get(transpose).writes[0].source.dtype)
        pixel_outer, pixel_inner = sch.split(pixels, [None, step])
        sch.reorder(pixel_outer, pixel_inner, channels)
        # the input's tile is LANES rows of channels with the pixel row (one) between them and the pixels
        sch.tensorize(pixel_inner, transpose_tile.intrinsic_name(self.lanes, step, dtype, gap_in=1, gap_out=0))
