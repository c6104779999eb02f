"""Intel AMX for the dot-product kernels: tile registers of up to 16 rows x 64 bytes, one instruction multiplying
a 16 x 64-byte tile of activations with a 16 x 64-byte tile of weights in the layout
compiler/kernels/dot_product.py packs them in (16 rows of K / GROUP, each 16 columns x GROUP), into a 16 x 16
tile of 32-bit sums.

The tensor intrinsic covers one block of the output: MT x NT tiles (rows x 16-column panels) over the whole
reduction. It loads the block's sums from the accumulator buffer, runs the reduction 64 bytes at a time, and
stores them back. The tile configuration (rows per tile: any divisor of the output rows up to 16, so 7x7 or 14x14
images need no padding) is written and loaded at the start of each block.

Using AMX needs the kernel's permission first (arch_prctl ARCH_REQ_XCOMP_PERM), which runtime/ asks for.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import s_tir
from tvm.tirx import IndexMap
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from ..kernels.dot_product import (A_TILES, AMX_CHUNK_GROUPS, B_TILES, C_TILES, LANES, MAX_TILE_ROWS, TILE_BYTES,
                                   DotProduct, amx_call, amx_rows, tile_register, widen)
from ..tvmscript import quick_parse
from .common import const_extent, fuse_epilogue, schedule_injective, vectorize_lanes
from .contraction import Contraction
from .dot_product import _dot_of

_registered: set[str] = set()


def intrinsic_name(dot: DotProduct, tile_rows: int, row_tiles: int, col_tiles: int, depth_groups: int) -> str:
    """Register (once) and name the AMX intrinsic for one block shape."""
    name = f"kiln_amx_{dot.name}_{tile_rows}x{row_tiles}_{col_tiles}_{depth_groups}"
    if name not in _registered:
        with quick_parse():
            intrinsic = _intrinsic(dot, tile_rows, row_tiles, col_tiles, depth_groups)
        TensorIntrin.register(name, *intrinsic, override=True)
        _registered.add(name)
    return name


def _intrinsic(dot: DotProduct, tile_rows: int, row_tiles: int, col_tiles: int, depth_groups: int):
    """(description, implementation) of one block: ROW_TILES x TILE_ROWS rows, COL_TILES 16-column panels
    (walked two at a time: 2 x 2 sum tiles at most), over the whole reduction of DEPTH_GROUPS groups."""
    group, data, weight, acc = dot.group, dot.data, dot.weight, dot.acc
    rows, cols, depth = tile_rows * row_tiles, LANES * col_tiles, depth_groups * group
    element = 4 // group  # bytes per data element
    chunk_groups = TILE_BYTES // (group * element)  # reduction groups per 64-byte chunk (16)
    chunks = depth_groups // chunk_groups
    pair = 2 if col_tiles % 2 == 0 else 1  # panels per step
    op = dot.amx_intrinsic

    def value(element):  # the same expression as the kernels' (dot_product.widen), or tensorize won't match
        return widen(element, acc)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (rows, depth), data, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (col_tiles, depth_groups, LANES, group), weight, offset_factor=1)
        C = T.match_buffer(c, (rows, cols), acc, offset_factor=1, strides=[sc, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:depth], B[0:col_tiles, 0:depth_groups, 0:LANES, 0:group])
            T.writes(C[0:rows, 0:cols])
            for m, n, ko, ki in T.grid(rows, cols, depth_groups, group):
                with T.sblock("update"):
                    vm, vn, vko, vki = T.axis.remap("SSRR", [m, n, ko, ki])
                    C[vm, vn] = C[vm, vn] + value(A[vm, vko * group + vki]) * value(
                        B[vn // LANES, vko, vn % LANES, vki])

    call, tile = amx_call, tile_register

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (rows, depth), data, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (col_tiles, depth_groups, LANES, group), weight, offset_factor=1)
        C = T.match_buffer(c, (rows, cols), acc, offset_factor=1, strides=[sc, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:depth], B[0:col_tiles, 0:depth_groups, 0:LANES, 0:group])
            T.writes(C[0:rows, 0:cols])
            config = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                config[i] = T.uint8(0)
            config[0] = T.uint8(1)  # palette 1
            for t in range(8):  # bytes per row (uint16, little-endian), then rows, of each tile register
                config[16 + 2 * t] = T.uint8(TILE_BYTES)
                config[48 + t] = T.if_then_else(t >= B_TILES, T.uint8(MAX_TILE_ROWS), T.uint8(tile_rows))
            call("llvm.x86.ldtilecfg", config.access_ptr("r"))
            for step in range(col_tiles // pair):
                # The sums start at zero (the schedule's init block has just cleared them): zeroing the tiles
                # saves loading them back from stores still in flight, which stalled the tile loads.
                for i in T.unroll(row_tiles):
                    for j in T.unroll(pair):
                        call("llvm.x86.tilezero", tile(C_TILES, i * pair + j))
                for k in range(chunks):
                    for i in T.unroll(row_tiles):
                        call("llvm.x86.tileloadd64", tile(A_TILES, i),
                             A.access_ptr("r", offset=i * tile_rows * sa + k * chunk_groups * group),
                             T.int64(sa * element))
                    for j in T.unroll(pair):
                        call("llvm.x86.tileloadd64", tile(B_TILES, j),
                             B.access_ptr("r", offset=((step * pair + j) * depth_groups + k * chunk_groups)
                                          * LANES * group),
                             T.int64(TILE_BYTES))
                    for i in T.unroll(row_tiles):
                        for j in T.unroll(pair):
                            call(op, tile(C_TILES, i * pair + j), tile(A_TILES, i), tile(B_TILES, j))
                for i in T.unroll(row_tiles):
                    for j in T.unroll(pair):
                        call("llvm.x86.tilestored64", tile(C_TILES, i * pair + j),
                             C.access_ptr("w", offset=i * tile_rows * sc + (step * pair + j) * LANES),
                             T.int64(sc * 4))
            # back to the init state: the kernel then saves no tile data when it switches threads
            call("llvm.x86.tilerelease")

    return desc, impl


MAX_BLOCK_BYTES = 64 << 10


def block_tiles(rows: int, panels: int, acc_bytes: int = 4) -> tuple[int, int, int] | None:
    """(rows per tile, row tiles, column panels) of an AMX block for an output of ROWS x PANELS 16-column panels:
    two row tiles where the rows allow, and as many panels (an even number where possible: they are walked two
    at a time, 2 x 2 sum tiles) as keep the block's sums within MAX_BLOCK_BYTES."""
    tile_rows = amx_rows(rows)
    if tile_rows is None:
        return None
    row_tiles = 2 if (rows // tile_rows) % 2 == 0 else 1
    fits = MAX_BLOCK_BYTES // (tile_rows * row_tiles * LANES * acc_bytes)
    step = 2 if panels % 2 == 0 else 1
    col_tiles = max((p for p in range(step, min(panels, fits) + 1, step) if panels % p == 0), default=step)
    return tile_rows, row_tiles, col_tiles


def _flattener(lead: list[int], n_spatial: int):
    """The index map (lead..., col, rest...) -> (row, col, rest...) of an output whose leading dims (extents LEAD)
    become rows."""
    def flat(*index):
        *spatial, col = index[:n_spatial]
        row = 0
        for extent, i in zip(lead, spatial):
            row = row * extent + i
        return [row, col, *index[n_spatial:]]

    return flat


class AMXContraction(Contraction):
    """The amx_matmul kernels of compiler/kernels/dot_product.py: output rows flattened, blocks of tiles tensorized
    with AMX over the whole reduction, the epilogue (dequantize, bias, activation, next quantize) fused into the
    block's write-back."""

    @staticmethod
    def _im2col_vector(sch: s_tir.Schedule, block) -> int:
        """The vector an im2col BLOCK copies its window positions' channels in: the largest run that divides
        both the channels and the row (K padded to whole AMX chunks: 3x3x96 = 864 -> 896 takes 32), so a vector
        never spans two positions; 0 when that is under 16 or BLOCK is no such im2col."""
        channels = int(sch.get(block).annotations.get("kiln.channels", 0)) if sch.get(block).annotations else 0
        loops = sch.get_loops(block)
        if sch.get(block).name_hint != "im2col" or len(loops) != 2 or not channels:
            return 0
        extent = const_extent(sch, loops[1])
        vector = math.gcd(channels, extent) if extent is not None else 0
        return vector if vector >= 16 else 0

    @staticmethod
    def _vectorize_window(sch: s_tir.Schedule, block, vector: int) -> None:
        """An im2col block walks (pixel, window position) and copies each position's channels as vectors of
        VECTOR (_im2col_vector: the border test is the same for all of a vector); measured, the fused loop with
        a 32-lane vector across positions cost more than the AMX work of a 56x56x64 3x3 convolution."""
        sch.vectorize(sch.split(sch.get_loops(block)[-1], [None, vector])[1])

    def _schedule_rows(self, sch: s_tir.Schedule, block) -> None:
        """A producer of the rows in loops of its own: an im2col over all pixels in parallel
        (_vectorize_window), anything else as an injective kernel."""
        vector = self._im2col_vector(sch, block)
        if not vector:
            schedule_injective(sch, block, self.lanes)
            return
        sch.parallel(sch.get_loops(block)[0])
        self._vectorize_window(sch, block, vector)

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        names = [sch.get(b).name_hint for b in blocks]
        if "amx_matmul" not in names:
            return None
        index = names.index("amx_matmul")
        main = blocks[index]
        dot = _dot_of(sch.get(main))
        if dot is None or dot.amx_intrinsic is None:
            return None
        producers = blocks[:index]  # the activations as rows: a copy, or an im2col
        # a lone im2col is copied block by block below (window_vector: its vector); others get loops of their own
        window_vector = self._im2col_vector(sch, producers[0]) if len(producers) == 1 else 0
        if not window_vector:
            for block in producers:
                self._schedule_rows(sch, block)
        epilogue = blocks[index + 1:]
        iters = sch.get(main).iter_vars
        n_spatial = len(iters) - 2
        extents = [int(iv.dom.extent) for iv in iters]
        rows, cols, depth_groups = int(np.prod(extents[: n_spatial - 1])), extents[n_spatial - 1], extents[-2]
        tiles = block_tiles(rows, cols // LANES)
        if tiles is None or depth_groups % AMX_CHUNK_GROUPS:
            return None
        tile_rows, row_tiles, col_tiles = tiles
        dtype = str(iters[0].dom.extent.ty)
        flat = _flattener(extents[: n_spatial - 1], n_spatial)
        if n_spatial > 2:  # flatten the output's leading dims into rows, in the main block and the epilogue
            sch.transform_block_layout(main, IndexMap.from_func(flat, ndim=len(iters), index_dtype=dtype))
            for block in epilogue:
                own = [int(iv.dom.extent) for iv in sch.get(block).iter_vars]
                if len(own) == n_spatial:
                    # a slice of the padded rows (197 of ViT's 200) runs over its own, smaller, rows
                    sch.transform_block_layout(block, IndexMap.from_func(_flattener(own[:-1], n_spatial),
                                                                         ndim=n_spatial, index_dtype=dtype))
        row, col, k_outer, k_inner = sch.get_loops(main)
        row_outer, row_inner = sch.split(row, [None, tile_rows * row_tiles])
        col_outer, col_inner = sch.split(col, [None, LANES * col_tiles])
        sch.reorder(row_outer, col_outer, row_inner, col_inner, k_outer, k_inner)
        if window_vector:
            # im2col per block of rows, just before the tiles read it (a few KB, in L1), rather than the whole
            # image's windows written out and read back: PP-OCRv4 det's 3x3 96 -> 32 convolutions at 160x160
            # wrote 23 MB of windows each
            parallel = row_outer
            sch.parallel(parallel)
            sch.compute_at(producers[0], parallel, preserve_unit_loops=True)
            self._vectorize_window(sch, producers[0], window_vector)
        else:
            parallel = sch.fuse(row_outer, col_outer)
            sch.parallel(parallel)
        write_back = sch.cache_write(main, 0, "local")
        fuse_epilogue(sch, main, epilogue, self.lanes)
        if n_spatial > 2:  # the block's sums as a [rows, cols] tile, the shape the intrinsic takes
            sch.transform_layout(main, ("write", 0), IndexMap.from_func(lambda *i: flat(*i)[:2], ndim=n_spatial,
                                                                     index_dtype=dtype))
        if n_spatial > 2 and len(sch.get(write_back).iter_vars) == n_spatial:
            # rows of a block span image rows: the write-back must walk flat rows too, or compute-at would take
            # the bounding box of the block's pixels
            sch.transform_block_layout(write_back, IndexMap.from_func(flat, ndim=n_spatial, index_dtype=dtype))
        sch.reverse_compute_at(write_back, parallel, preserve_unit_loops=True)
        vectorize_lanes(sch, sch.get_loops(write_back)[-1], self.lanes)
        init = sch.decompose_reduction(main, row_inner)
        vectorize_lanes(sch, sch.get_loops(init)[-1], self.lanes)
        sch.tensorize(row_inner, intrinsic_name(dot, tile_rows, row_tiles, col_tiles, depth_groups))
        return sch
