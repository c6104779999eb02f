"""Helpers shared by Kiln's CPU schedule rules: loop extents, factor choice, and the injective schedule."""

from __future__ import annotations

from tvm import s_tir, tirx


def const_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent when it is a constant, else None."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def largest_divisor(n: int, limit: int, candidates=None) -> int:
    """The largest of CANDIDATES (default 1..LIMIT) that divides N and is at most LIMIT."""
    options = candidates if candidates is not None else range(limit, 0, -1)
    return next((c for c in options if c <= limit and n % c == 0), 1)


def vector_factor(extent: int, lanes: int) -> int:
    """How many elements of a contiguous axis of EXTENT one vectorized step covers (two vectors when they fit)."""
    for factor in (2 * lanes, lanes, lanes // 2, lanes // 4):
        if factor >= 2 and extent % factor == 0:
            return factor
    return extent if extent <= 2 * lanes else 1


def schedule_injective(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Fuse BLOCK's loops, vectorize the innermost run of the output, parallelize the rest."""
    # Leading symbolic loops (a dynamic batch) stay serial and unfused; see Contraction for why.
    loops = []
    for loop in reversed(sch.get_loops(block)):  # the innermost run of constant loops, which can be fused
        if const_extent(sch, loop) is None:
            break
        loops.insert(0, loop)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = const_extent(sch, fused)
    factor = vector_factor(extent, lanes)
    if factor > 1 and extent > factor:
        outer, inner = sch.split(fused, [None, factor])
        sch.parallel(outer)
        sch.vectorize(inner)
    elif factor > 1:
        sch.vectorize(fused)
    elif extent > 1:
        sch.parallel(fused)
