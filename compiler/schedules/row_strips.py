"""Schedule of a convolution fused with the depthwise convolution that reads it (kiln.FuseRowStrips): one strip
of output rows at a time, with the first convolution's rows for that strip (the window's overlap included)
computed just before, so the first convolution's output, the widest activation of an inverted-residual block,
stays in the core's L2 instead of going out to memory and back.

    parallel  strips (batch x output rows / R)
      first convolution over the strip's input rows   (register-tiled as in Contraction, epilogue fused)
      depthwise convolution over the strip's R rows    (streaming tile as in Contraction, epilogue fused)
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info

from .common import KilnRule, const_extent, fuse_epilogue, spatial_domain, uses
from .contraction import SMALL_REDUCTION, channel_group, element_bytes, innermost_index_ok, is_lane_of, spatial_count
from .tiles import register_tile, streaming_tile, tile_lanes

STRIP_BYTES = 512 << 10  # the first convolution's rows of one strip: half a core's L2
MIN_STRIPS = 8  # strips per image: enough parallel tasks for the cores to share evenly


def strip_rows(out_rows: int, stride: int, window: int, row_bytes: int) -> int | None:
    """Output rows per strip: the largest divisor R of OUT_ROWS whose input rows ((R - 1) * STRIDE + WINDOW, of
    ROW_BYTES each) fit STRIP_BYTES, with at least MIN_STRIPS strips; None when none does. Measured on
    MobileNetV2's 112x112x96 -> 56x56 stride-2 pair (2 threads, warm): 0.38 ms with R = 4, 0.46 with R = 2, 0.55
    with R = 8 (7 strips: one core idles for the last)."""
    fits = [r for r in range(1, out_rows // MIN_STRIPS + 1)
            if out_rows % r == 0 and ((r - 1) * stride + window) * row_bytes <= STRIP_BYTES]
    return max(fits, default=None)


@dataclass
class _Pair:
    """The blocks of a fused pair, in order: producers1, conv1, epilogue1, producers2, conv2, epilogue2."""

    producers1: list
    conv1: object
    epilogue1: list
    producers2: list
    conv2: object
    epilogue2: list


def _terms(sch: s_tir.Schedule, block) -> int | None:
    """Reduction terms per output of BLOCK (None when an extent is symbolic)."""
    total = 1
    for iv in sch.get(block).iter_vars:
        if iv.iter_type == tirx.IterVar.CommReduce:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return None
            total *= int(iv.dom.extent)
    return total


def split_pair(sch: s_tir.Schedule, blocks: list) -> _Pair | None:
    """The blocks of BLOCKS as a fused pair of NHWC float32 convolutions (the second reading data and weights
    and reducing over at most SMALL_REDUCTION terms: a depthwise one, or a grouped one with few channels per
    group; each reading its input through inlinable copies or padding), or None."""
    infos = [get_sblock_info(sch, b) for b in blocks]
    reductions = [i for i, info in enumerate(infos) if info.is_reduction()]
    if len(reductions) != 2 or any(not infos[i].is_injective() for i in range(len(blocks)) if i not in reductions):
        return None
    first, second = reductions
    conv1, conv2 = blocks[first], blocks[second]
    for conv in (conv1, conv2):
        buffer = sch.get(conv).writes[0].source
        if len(buffer.shape) != 4 or str(buffer.dtype) != "float32" or spatial_count(sch.get(conv)) != 4 \
                or not all(isinstance(d, tirx.IntImm) for d in buffer.shape):
            return None
    between = blocks[first + 1: second]
    epilogue1 = [b for b in between if spatial_domain(sch, b) == spatial_domain(sch, conv1)]
    if between[: len(epilogue1)] != epilogue1:
        return None
    if len({region.source for region in sch.get(conv2).reads}) != 2:
        # a depthwise convolution reads data and weights; a pooling only data. SqueezeNet's stem convolution
        # fused with its 3x3 stride-2 max pooling ran 0.94 ms in the model, against 0.74 apart.
        return None
    terms1, terms2 = _terms(sch, conv1), _terms(sch, conv2)
    if terms1 is None or terms2 is None or terms2 > SMALL_REDUCTION or (first > 0 and terms1 > SMALL_REDUCTION):
        return None
    return _Pair(blocks[:first], conv1, epilogue1, between[len(epilogue1):], conv2, blocks[second + 1:])


def _row_step(sch: s_tir.Schedule, conv, source: tirx.Buffer) -> tuple[int, int] | None:
    """(stride, window) of CONV's output rows over the rows of SOURCE: how far one output row moves the window,
    and how many input rows one output row reads."""
    block = sch.get(conv)
    regions = [r for r in block.reads if r.source.same_as(source)]
    if len(regions) != 1:
        return None
    row_index = regions[0].region[1].min
    coeff = tvm.sym.detect_linear_equation(row_index, [block.iter_vars[1].var])
    if not coeff or not isinstance(coeff[0], tirx.IntImm):
        return None
    window = 1
    for iv in block.iter_vars[4:]:
        if uses(row_index, iv.var):
            window *= int(iv.dom.extent)
    return int(coeff[0]), window


class RowStrips(KilnRule):
    """A convolution and the depthwise convolution after it, computed strip by strip (see module docstring).
    Its tiles are fixed, not sampled: a search times the kernel warm in cache, where the strips gain nothing."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        pair = split_pair(sch, blocks)
        if pair is None:
            return None
        for block in pair.producers1 + pair.producers2:
            sch.compute_inline(block)
        conv1, conv2 = pair.conv1, pair.conv2
        if not all(self._vector_ok(sch, conv) for conv in (conv1, conv2)):
            return None
        batch, rows, cols, channels, *reduce2 = sch.get_loops(conv2)
        middle = sch.get(conv1).writes[0].source if not pair.epilogue1 else \
            sch.get(pair.epilogue1[-1]).writes[0].source
        step = _row_step(sch, conv2, middle)
        tile = self._depthwise_tile(const_extent(sch, cols), const_extent(sch, channels))
        if step is None or tile is None:
            return None
        _, _, width1, channels1 = (int(d) for d in middle.shape)
        strip = strip_rows(const_extent(sch, rows), *step, width1 * channels1 * element_bytes(middle))
        if strip is None:
            return None
        parallel = self._depthwise(sch, pair, strip, tile)
        self._first(sch, pair, parallel)
        return sch

    def _depthwise_tile(self, cols: int, channels: int) -> tuple[int, int] | None:
        """(rows, vectors of lanes) of the depthwise register tile: the streaming tile; None where it does not
        apply (two vectors of channels or fewer). Such a pair runs faster apart, each on its tuned schedule:
        MobileNetV2's stem convolution with its 112x112x32 depthwise one ran 0.31 ms fused (16 x 1 tile), 0.25
        apart; the model 3-5% faster (A/B, three runs)."""
        return streaming_tile(cols, channels, self.lanes)

    def _vector_ok(self, sch: s_tir.Schedule, conv) -> bool:
        block = sch.get(conv)
        vec_var = block.iter_vars[3].var
        return innermost_index_ok(block, vec_var, channel_group(block, vec_var))

    def _depthwise(self, sch: s_tir.Schedule, pair: _Pair, strip: int, tile: tuple[int, int]):
        """Tile the second convolution into strips of STRIP rows (the parallel loop, returned) and the register
        TILE (rows, vectors); its epilogue fused into the tile's write-back."""
        (tile_rows, vectors), lanes = tile, self.lanes
        batch, rows, cols, channels, *reduce = sch.get_loops(pair.conv2)
        row_outer, row_inner = sch.split(rows, [None, strip])
        col_outer, col_inner = sch.split(cols, [None, tile_rows])
        chan_outer, chan_vectors, chan_lanes = sch.split(channels, [None, vectors, lanes])
        sch.reorder(batch, row_outer, row_inner, col_outer, chan_outer, *reduce, col_inner, chan_vectors, chan_lanes)
        parallel = sch.fuse(batch, row_outer)
        sch.parallel(parallel)
        write_back = sch.cache_write(pair.conv2, 0, "local")
        fuse_epilogue(sch, pair.conv2, pair.epilogue2, lanes)
        sch.reverse_compute_at(write_back, chan_outer, preserve_unit_loops=True)
        sch.vectorize(sch.split(sch.get_loops(write_back)[-1], [None, lanes])[-1])
        sch.unroll(col_inner)
        sch.unroll(chan_vectors)
        sch.vectorize(chan_lanes)
        sch.decompose_reduction(pair.conv2, reduce[0])
        return parallel

    def _first(self, sch: s_tir.Schedule, pair: _Pair, parallel) -> None:
        """Compute the first convolution (and its epilogue) inside each strip, over the rows the strip reads,
        with Contraction's register tile."""
        write_back = sch.cache_write(pair.conv1, 0, "local")
        fuse_epilogue(sch, pair.conv1, pair.epilogue1, self.lanes)
        sch.compute_at(write_back, parallel, preserve_unit_loops=True)
        sch.compute_at(pair.conv1, parallel, preserve_unit_loops=True)
        batch, rows, cols, channels, *reduce = sch.get_loops(pair.conv1)[1:]
        block = sch.get(pair.conv1)
        vec_var = block.iter_vars[3].var
        group = channel_group(block, vec_var)
        packed = any(is_lane_of(rng.min, vec_var, group) for r in block.reads for rng in r.region[-1:])
        # With packed weights the tile may span several panels: the first convolution of a strip reduces over
        # few input channels, so each tile's set-up and write-back weigh more. MobileNetV2's 112x112 16 -> 96 pair
        # ran 371-373 us with 8 x 32 tiles, 359 with 14 x 32, 351 with 8 x 48, 342-346 with 4 x 96 (in the model,
        # 2 threads, p10).
        tile_rows, width = register_tile(const_extent(sch, cols), const_extent(sch, channels), self.lanes, group,
                                         wide=packed, panels=packed)
        vf = tile_lanes(width, self.lanes)
        col_outer, col_inner = sch.split(cols, [None, tile_rows])
        chan_outer, chan_vectors, chan_inner = sch.split(channels, [None, width // vf, vf])
        sch.reorder(batch, rows, col_outer, chan_outer, *reduce, col_inner, chan_vectors, chan_inner)
        sch.reverse_compute_at(write_back, chan_outer, preserve_unit_loops=True)
        inner = sch.get_loops(write_back)[-1]
        step = vf if vf < width else self.lanes
        if width > step:
            inner = sch.split(inner, [None, step])[-1]
        if width > 1:
            sch.vectorize(inner)
            sch.vectorize(chan_inner)
        sch.unroll(col_inner)
        sch.unroll(chan_vectors)
        if reduce:
            sch.decompose_reduction(pair.conv1, reduce[0])
