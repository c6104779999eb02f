"""Schedule for the dot-product kernels of compiler/kernels/dot_product.py (int8 VNNI, bf16): the register tile of
Contraction, with the innermost 16 columns x GROUP reduction steps replaced by one dot-product instruction.

Loop nest:
    parallel  fused(outer spatial loops, rows / rn, cols / (nv x 16))
      reduce    kh, kw, k / GROUP                         (k / GROUP for a matmul)
        unroll    row in rn, vector in nv                 (rn x nv accumulator registers)
          tensorized  16 columns x GROUP steps            (vpdpbusd / vdpbf16ps)
Measured on a 2-core Xeon (AVX-512 VNNI), 3x3 convolution 14x14x256 -> 256 in int8: 14 x 2 tiles 657 GOP/s,
7 x 2 591, 2 x 4 435, 1 x 8 278 (fp32 with Kiln's Contraction: 304 GFLOP/s).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.analysis import get_sblock_info
from tvm.script import tirx as T

from ..kernels.dot_product import DOT_PRODUCTS, LANES, DotProduct
from ..tvmscript import quick_parse
from .common import const_extent, fuse_epilogue, schedule_injective, vectorize_lanes
from .contraction import Contraction

MAX_ACCUMULATORS = 28  # of 32 registers: the rest hold the weight vectors and the broadcast activations


def _intrinsic(dot: DotProduct) -> tuple:
    """(description, implementation) PrimFuncs of DOT over a local accumulator, for TensorIntrin.register."""
    group, data, weight, acc = dot.group, dot.data, dot.weight, dot.acc
    vector = f"{weight}x{LANES * group}"

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((group,), data, offset_factor=1), b: T.Buffer((LANES, group), weight, offset_factor=1),
             c: T.Buffer((LANES,), acc, offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:group], b[0:LANES, 0:group])
            T.writes(c[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], acc) * T.cast(b[vi, vk], acc)

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((group,), data, offset_factor=1), b: T.Buffer((LANES, group), weight, offset_factor=1),
             c: T.Buffer((LANES,), acc, offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:group], b[0:LANES, 0:group])
            T.writes(c[0:LANES])
            # the GROUP data elements as one 32-bit word, broadcast to every lane
            word_of_a = T.reinterpret(a.vload([0], f"{data}x{group}"), dtype="int32")
            c[T.ramp(T.int32(0), 1, LANES)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(dot.llvm_intrinsic),
                c.vload([0], dtype=f"{acc}x{LANES}"),
                T.reinterpret(T.broadcast(word_of_a, LANES), dtype=f"{data}x{LANES * group}"),
                b.vload([0, 0], dtype=vector),
                dtype=f"{acc}x{LANES}",
            )

    return desc, impl


def intrinsic_name(dot: DotProduct) -> str:
    return f"kiln_{dot.name}_{LANES}x{dot.group}_local"


with quick_parse():
    for _dot in DOT_PRODUCTS:
        if _dot.llvm_intrinsic:
            TensorIntrin.register(intrinsic_name(_dot), *_intrinsic(_dot), override=True)


def dot_tile(rows: int | None, panels: int) -> tuple[int, int]:
    """(rows, vectors of 16 columns) of the accumulator tile: the most accumulators within MAX_ACCUMULATORS, from
    exact divisors of ROWS and of PANELS (the output's 16-column blocks), at most 4 vectors; ties go to 2 vectors
    (one broadcast feeds two instructions; see the module docstring's measurements)."""
    best = (0, 0, 1, 1)
    for nv in (1, 2, 3, 4):
        if panels % nv:
            continue
        limit = MAX_ACCUMULATORS // nv
        rn = max((d for d in range(1, min(rows or 1, limit) + 1) if (rows or 1) % d == 0), default=1)
        best = max(best, (rn * nv, nv == 2, rn, nv))
    return best[2], best[3]


def _dot_of(block) -> DotProduct | None:
    """The instruction BLOCK's reduction fits: its accumulator's dtype and the dtypes of its two operands."""
    reads = [str(r.source.dtype) for r in block.reads]
    acc = str(block.writes[0].source.dtype)
    for dot in DOT_PRODUCTS:
        if dot.data in reads and dot.weight in reads and dot.acc == acc:
            return dot
    return None


class DotProductContraction(Contraction):
    """Tensorized register-tiled schedule for the dot-product kernels (module docstring)."""

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        infos = [get_sblock_info(sch, b) for b in blocks]
        reductions = [i for i, info in enumerate(infos) if info.is_reduction()]
        if len(reductions) != 1:
            return None
        main = blocks[reductions[0]]
        dot = _dot_of(sch.get(main))
        if dot is None or dot.llvm_intrinsic is None:
            return None
        kinds = [iv.iter_type for iv in sch.get(main).iter_vars]
        n_spatial = kinds.index(tirx.IterVar.CommReduce)
        loops = sch.get_loops(main)
        spatial, reduce = loops[:n_spatial], loops[n_spatial:]
        cols = const_extent(sch, spatial[-1])
        if cols is None or cols % LANES or const_extent(sch, reduce[-1]) != dot.group:
            return None
        for block in blocks[: reductions[0]]:  # quantize, padding: their own loops (tensorize needs plain loads)
            schedule_injective(sch, block, self.lanes)
        rows = const_extent(sch, spatial[-2]) if n_spatial >= 2 else None
        rn, nv = dot_tile(rows, cols // LANES)
        col_outer, col_vec, col_lane = sch.split(spatial[-1], [None, nv, LANES])
        if rows is not None:
            row_outer, row_inner = sch.split(spatial[-2], [None, rn])
            outer, inner = [*spatial[:-2], row_outer, col_outer], [row_inner, col_vec]
        else:
            outer, inner = [*spatial[:-1], col_outer], [col_vec]
        symbolic = [loop for loop in outer if const_extent(sch, loop) is None]
        fixed = [loop for loop in outer if const_extent(sch, loop) is not None]
        sch.reorder(*symbolic, *fixed, *reduce[:-1], *inner, col_lane, reduce[-1])
        parallel = sch.fuse(*fixed) if len(fixed) > 1 else fixed[0]
        sch.parallel(parallel)

        write_back = sch.cache_write(main, 0, "local")
        fuse_epilogue(sch, main, blocks[reductions[0] + 1:], self.lanes)
        sch.reverse_compute_at(write_back, parallel, preserve_unit_loops=True)
        vectorize_lanes(sch, sch.get_loops(write_back)[-1], self.lanes)
        for loop in inner:
            sch.unroll(loop)
        init = sch.decompose_reduction(main, reduce[0])  # reduce is (.., k / GROUP, GROUP): never one loop
        vectorize_lanes(sch, sch.get_loops(init)[-1], self.lanes)
        sch.tensorize(col_lane, intrinsic_name(dot))
        return sch
