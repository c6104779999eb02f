"""Default CPU schedule for kernels with one reduction whose output's innermost axis is contiguous in every
operand: NHWC convolution (HWIO weights, grouped and depthwise too), matmul / dense / batch-matmul, pooling.

Loop nest it builds, the shape of a GEMM micro-kernel:
    parallel  fused(outer spatial loops, rows / rn, cols / vf)
      reduce    r0, r1, ...                              (kh, kw, ci for a convolution; k for a matmul)
        unroll    row in rn                              (register tile: rn rows ...
          vector    col in vf                            ...of vf contiguous outputs, accumulated in registers)
    then the epilogue (bias, residual add, activation) on the register tile, written once to memory.
A memory-bound kernel (streaming_tile) splits cols once more, into unrolled vectors of channels.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info

from .common import (KilnRule, const_extent, domain_analyzer, fuse_epilogue, schedule_injective, split_tile, uses,
                     vectorize_lanes)
from .injective import transposed_axis
from .tiles import few_terms_tile, register_tile, streaming_tile, tile_lanes, transposed_rows

# Reduction terms per output up to which padding is inlined rather than materialized (and the few-terms tile
# used): 64 takes in the 7x7 depthwise convolutions (49 terms), which ran 2.6x faster so (ConvNeXt's 7x7x768
# over a 7x7 map alone: 0.052 -> 0.020 ms; its 9 14x14x384 ones 0.64 -> 0.40 ms in all).
SMALL_REDUCTION = 64
# Weights above SPILLING_WEIGHT_BYTES do not stay in a core's L2 while every row walks all of them: rows are then
# taken in chunks of about ROW_CHUNK_BYTES of activations, and each weight panel walks one chunk at a time.
SPILLING_WEIGHT_BYTES = 1 << 20
ROW_CHUNK_BYTES = 512 << 10
# A kernel that reduces over few terms per output and reads more activations than STREAMING_BYTES (a core's L2
# share) is bound by memory, not arithmetic: it gets a register tile as wide as tiles.MAX_TILE_VECTORS vectors
# of channels (see tiles.streaming_tile), fixed rather than tuned, since a search times it warm in cache.
STREAMING_BYTES = 1 << 20
# ... when each output reduces over at most STREAMING_TERMS terms: wider windows are bound by their arithmetic even
# over large maps, and keep the few-terms tile (alone, 2 threads: ConvNeXt's 7x7 depthwise over 56x56x96 ran 0.376
# ms streaming and 0.149 not; a 5x5 over 56x56x144 0.154 and 0.121; 3x3 ones over 112x112x32 0.050 and 0.056).
STREAMING_TERMS = 9


def innermost_index_ok(block: tirx.SBlock, vec_var: tirx.Var, group: int | None = None) -> bool:
    """True when every buffer access either steps with VEC_VAR in its last index (contiguous: the index is
    VEC_VAR plus terms free of it, as in a depthwise conv's `c + rc`) or does not use it at all (broadcast).
    In a grouped convolution the input's `ff // GROUP * C + rc` counts as free of ff (see _uses)."""
    analyzer = domain_analyzer(block.iter_vars)
    for region in list(block.reads) + list(block.writes):
        if not region.region:
            continue
        last = analyzer.simplify(region.region[-1].min)
        if uses(last, vec_var, group):
            if is_lane_of(last, vec_var, group):
                continue
            if uses(analyzer.simplify(last - vec_var), vec_var, group):
                return False
        elif any(uses(analyzer.simplify(r.min), vec_var, group) for r in region.region):
            return False
    return True


def is_lane_of(expr, var: tirx.Var, group: int | None) -> bool:
    """True for VAR % GROUP: the lane of a weight packed as [cols // GROUP, ..., GROUP] (see kiln.PackWeights),
    contiguous for any vector width that divides GROUP."""
    return bool(group) and isinstance(expr, tirx.FloorMod) and isinstance(expr.a, tirx.Var) \
        and expr.a.same_as(var) and isinstance(expr.b, tirx.IntImm) and int(expr.b) == group


def group_size(expr, var: tirx.Var) -> int | None:
    """K when EXPR contains VAR // K (a grouped convolution's `ff // K * C + rc`), else None."""
    if isinstance(expr, tirx.FloorDiv) and isinstance(expr.a, tirx.Var) and expr.a.same_as(var) \
            and isinstance(expr.b, tirx.IntImm):
        return int(expr.b)
    for child in (getattr(expr, "a", None), getattr(expr, "b", None)):
        found = group_size(child, var) if child is not None else None
        if found:
            return found
    return None


def is_copy(block: tirx.SBlock) -> bool:
    """Whether BLOCK stores a plain load of another buffer."""
    return isinstance(block.body, tirx.BufferStore) and isinstance(block.body.value, tvm.ir.expr.TensorLoad)


def _output_rows(sch: s_tir.Schedule, loops: list) -> int:
    """Product of the constant extents of LOOPS (symbolic ones, such as batch, count as 1)."""
    total = 1
    for loop in loops:
        total *= const_extent(sch, loop) or 1
    return total


def element_bytes(buffer: tirx.Buffer) -> int:
    """Bytes of one element of BUFFER."""
    return tvm.runtime.DataType(str(buffer.dtype)).bits // 8


def buffer_bytes(buffer: tirx.Buffer) -> int | None:
    """Bytes of all of BUFFER (None when a dimension is symbolic)."""
    size = element_bytes(buffer)
    for d in buffer.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        size *= int(d)
    return size


def _largest_buffer_bytes(block: tirx.SBlock) -> int:
    """Bytes of the largest buffer BLOCK reads or writes (0 when a shape is symbolic)."""
    sizes = [buffer_bytes(region.source) for region in list(block.reads) + list(block.writes)]
    return 0 if None in sizes else max(sizes, default=0)


def spatial_count(block: tirx.SBlock) -> int | None:
    """How many spatial iterators BLOCK has, when they all come before its reduction ones; else None."""
    kinds = [iv.iter_type for iv in block.iter_vars]
    count = kinds.index(tirx.IterVar.CommReduce) if tirx.IterVar.CommReduce in kinds else len(kinds)
    return None if any(k != tirx.IterVar.CommReduce for k in kinds[count:]) else count


def channel_group(block: tirx.SBlock, vec_var: tirx.Var) -> int | None:
    """The channels per group of a grouped convolution BLOCK whose output channel is VEC_VAR, else None."""
    return next((k for r in block.reads for rng in r.region if (k := group_size(rng.min, vec_var))), None)


def _rows_alias(block: tirx.SBlock, row_var: tirx.Var, vec_var: tirx.Var) -> bool:
    """True when a broadcast operand (an input read without VEC_VAR) steps a multiple of 4 KB per row."""
    for region in block.reads:
        shape = [d for d in region.source.shape]
        mins = [r.min for r in region.region]
        if any(uses(m, vec_var) for m in mins) or not all(isinstance(d, tirx.IntImm) for d in shape):
            continue
        for dim, index in enumerate(mins):
            if not uses(index, row_var):
                continue
            coeff = tvm.sym.detect_linear_equation(index, [row_var])
            if coeff and isinstance(coeff[0], tirx.IntImm):
                inner = 1
                for d in shape[dim + 1:]:
                    inner *= int(d)
                stride = int(coeff[0]) * inner * element_bytes(region.source)
                if stride and stride % 4096 == 0:
                    return True
    return False


def _panels_inside_row_chunks(sch: s_tir.Schedule, outer: list, chunk_tiles: int) -> list:
    """Reorder OUTER (row loops, then the weight-panel loop last) so the panel loop runs inside chunks of about
    CHUNK_TILES row tiles: the chunk's activations stay in cache while the panels stream past. Measured on a
    1024x768 @ 768x768 matmul (BERT-base at batch 8): 6.9 ms rows-first, 4.3 ms chunked; 1024x3072 @ 3072x768
    37.6 and 21.7 ms; a 3x3 convolution 8x14x14x256 -> 256: 9.3 and 6.8 ms."""
    *rows, panel = outer
    inside = 1
    for i in range(len(rows) - 1, -1, -1):
        extent = const_extent(sch, rows[i])
        if extent is None:
            break
        if inside * extent <= chunk_tiles:
            inside *= extent
            continue
        factor = max((d for d in range(1, chunk_tiles // inside + 1) if extent % d == 0), default=1)
        if factor == 1:
            return [*rows[: i + 1], panel, *rows[i + 1:]]
        split_outer, split_inner = sch.split(rows[i], [extent // factor, factor])
        return [*rows[:i], split_outer, panel, split_inner, *rows[i + 1:]]
    return outer


MAX_UNROLLED_WRITES = 64


def unroll_tile_write(sch: s_tir.Schedule, write_back, anchor) -> None:
    """Unroll a few-terms kernel's write-back where it covers one register tile (at most MAX_UNROLLED_WRITES
    vector writes: a transposed tile writes 32-64 short runs), so every index of the tile is a constant and LLVM
    keeps all of it in registers; a loop over the tile's pixels left it a stack array, stored at every branch of
    the window's border test. MobileNetV2 int8's 56x56x144 depthwise convolutions 0.120 -> 0.074 ms, the model
    1.91 -> 1.75 ms in its runs. Not a tail's own loop nest over the whole output (EfficientNet's
    squeeze-excitation scale: 12,544 iterations of a SiLU expression took its compile from 19 s to minutes), and
    not for the other kernels: EfficientNet-B0 float32 ran 2% slower."""
    loops = sch.get_loops(write_back)  # computed at ANCHOR (reverse_compute_at), so ANCHOR is among them
    at = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(anchor)))
    tile = loops[at + 1:-1]
    if math.prod(const_extent(sch, loop) or MAX_UNROLLED_WRITES + 1 for loop in tile) <= MAX_UNROLLED_WRITES:
        for loop in tile:
            sch.unroll(loop)


def single_reduction(sch: s_tir.Schedule, blocks: list) -> int | None:
    """The index in BLOCKS of their one reduction block, when every other block is injective; else None."""
    infos = [get_sblock_info(sch, b) for b in blocks]
    reductions = [i for i, info in enumerate(infos) if info.is_reduction()]
    if len(reductions) != 1 or any(not infos[i].is_injective() for i in range(len(infos)) if i != reductions[0]):
        return None
    return reductions[0]


def reduction_terms(sch: s_tir.Schedule, loops: list) -> int:
    """Terms per output over the reduction LOOPS (a symbolic extent counts as more than SMALL_REDUCTION)."""
    terms = 1
    for loop in loops:
        terms *= const_extent(sch, loop) or SMALL_REDUCTION + 1
    return terms


class Contraction(KilnRule):
    """Register-tiled, vectorized, parallel schedule for a single-reduction kernel (see module docstring)."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        reduction = single_reduction(sch, blocks)
        if reduction is None:
            return None
        main = blocks[reduction]
        n_spatial = spatial_count(sch.get(main))
        if not n_spatial:
            return None
        vec_var = sch.get(main).iter_vars[n_spatial - 1].var
        group = channel_group(sch.get(main), vec_var)
        if not innermost_index_ok(sch.get(main), vec_var, group):
            return None
        loops = sch.get_loops(main)
        if len(loops) != len(sch.get(main).iter_vars):
            return None
        spatial, reduce = loops[:n_spatial], loops[n_spatial:]
        cols = const_extent(sch, spatial[-1])
        if cols is None:
            return None

        # Producers (padding): plain copies are inlined; real padding is inlined where each output reduces over
        # few terms (depthwise: the border test costs less than a pass over memory, 0.033 vs 0.065 ms) and
        # materialized where it reduces over many (a 3x3x64 conv: 1.06 ms materialized vs 2.40 ms inlined).
        terms = reduction_terms(sch, reduce)
        for block in blocks[: reduction]:
            if is_copy(sch.get(block)) or terms <= SMALL_REDUCTION:
                sch.compute_inline(block)
            else:
                schedule_injective(sch, block, self.lanes)
        epilogue = blocks[reduction + 1:]

        weights_first = cols > _output_rows(sch, spatial[:-1])
        rows = const_extent(sch, spatial[-2]) if n_spatial >= 2 else None
        aliased = n_spatial >= 2 and _rows_alias(sch.get(main), sch.get(main).iter_vars[n_spatial - 2].var, vec_var)
        packed = any(is_lane_of(rng.min, vec_var, group) for r in sch.get(main).reads for rng in r.region[-1:])
        streaming = None
        # An epilogue that writes the output transposed (a model's NCHW output, kiln.FuseBorderTransposes) writes
        # runs along the tile's rows: no streaming tile (its rows are few), and rows enough for whole runs.
        transposed = bool(epilogue) and rows is not None and transposed_axis(sch.get(epilogue[-1])) is not None
        # Not for packed weights: SqueezeNet's first convolution (27 terms, 111x111x64) ran 0.51 ms with 3 x 64
        # tiles against 0.33 tuned, and MobileNetV2's 112x112 16 -> 96 one gained under 10%.
        few_terms = rows is not None and terms <= SMALL_REDUCTION and not packed and group is None
        if few_terms and terms <= STREAMING_TERMS and not transposed \
                and _largest_buffer_bytes(sch.get(main)) > STREAMING_BYTES:
            streaming = streaming_tile(rows, cols, self.lanes)
        if streaming:
            (rn, vectors), vf = streaming, self.lanes
            col_outer, col_vectors, col_inner = sch.split(spatial[-1], [None, vectors, vf])
            row_outer, row_inner = sch.split(spatial[-2], [None, rn])
            outer = [*spatial[:-2], row_outer, col_outer]
            inner = [row_inner, col_vectors, col_inner]
        else:
            # The few-terms tile is fixed, not sampled, like the streaming one: a search times the kernel warm in
            # cache, where MobileNetV2's depthwise convolutions kept tiles that ran 8% slower in the model (the
            # 28x28x192 one: 14 x 16 records at 49 us against 37 us with 7 x 32).
            fixed = few_terms and few_terms_tile(rows, cols, self.lanes)
            rn, width = fixed or register_tile(rows, cols, self.lanes, group, aliased, wide=packed)
            if transposed and not fixed:  # (a few-terms tile stays: 7 x 32 beat 8 x 32 on single-op depthwise)
                rn = transposed_rows(rows, width, self.lanes) or rn
            tunable = self.tunable and not fixed
            vf = tile_lanes(width, self.lanes)
            col_outer, col_inner = split_tile(sch, spatial[-1], width, tunable)
            col_inner = sch.split(col_inner, [None, vf]) if vf < width else [col_inner]
            if rows is not None:
                row_outer, row_inner = split_tile(sch, spatial[-2], rn, tunable)
                outer = [*spatial[:-2], row_outer, col_outer]
                inner = [row_inner, *col_inner]
            else:
                outer, inner = [*spatial[:-1], col_outer], col_inner
        if weights_first:
            # More weights than activations (late conv stages, dense layers): walk one weight panel over all
            # rows before the next, so each core keeps its panel in cache instead of streaming every panel per row.
            outer = [outer[-1], *outer[:-1]]
        elif terms * cols * 4 > SPILLING_WEIGHT_BYTES:
            outer = _panels_inside_row_chunks(sch, outer, max(1, ROW_CHUNK_BYTES // (terms * 4 * rn)))
        # Symbolic loops (a dynamic batch) stay serial outside: fused into the parallel loop they would leave
        # divisions by unknown extents in the index arithmetic of the innermost loops (2.5x slower measured).
        symbolic = [loop for loop in outer if const_extent(sch, loop) is None]
        fixed = [loop for loop in outer if const_extent(sch, loop) is not None]
        sch.reorder(*symbolic, *fixed, *reduce, *inner)
        parallel = sch.fuse(*fixed) if len(fixed) > 1 else fixed[0]
        sch.parallel(parallel)

        write_back = fuse_epilogue(sch, main, epilogue, self.lanes, sch.cache_write(main, 0, "local"))
        sch.reverse_compute_at(write_back, parallel, preserve_unit_loops=True)
        wb_loops = sch.get_loops(write_back)[1:]
        if wb_loops and vf > 1:
            vectorize_lanes(sch, wb_loops[-1], vf)
            if few_terms:
                unroll_tile_write(sch, write_back, parallel)

        for loop in inner[:-1]:
            sch.unroll(loop)
        if few_terms:
            # The taps of a few-terms kernel (a depthwise convolution's window) unrolled around its register
            # tile, now held in registers (build/stack_scratch.py): LLVM then shares the loads of neighbouring
            # windows. MobileNetV2 int8's depthwise kernels 3-10% faster, EfficientNet-B0 int8 4.47 -> 4.33 ms.
            for loop in reduce:
                sch.unroll(loop)
        if vf > 1:
            sch.vectorize(inner[-1])
        if reduce:  # last: the init loops it splits off inherit the unroll and vectorize marks
            sch.decompose_reduction(main, reduce[0])
        return sch
