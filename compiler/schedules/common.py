"""Helpers shared by Kiln's CPU schedule rules: loop extents, factor choice, and the injective schedule."""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.stmt import SBlockRealize
from tvm.target import Target

log = logging.getLogger(__name__)
MAX_SAMPLED_INNER = 64  # the largest inner tile the tuner may pick: 4 vectors of 16 lanes


class KilnRule(ScheduleRule):
    """Base of Kiln's CPU rules: opens a schedule on an llvm kernel and hands its top-level blocks to
    schedule(); a kernel the rule cannot schedule (ScheduleError anywhere) is declined, so another rule or the
    naive loops take it and the kernel report says so: a default rule never fails a build. TVM's own checks
    (e.g. a fuse over a zero-size axis) raise other errors than ScheduleError; they decline the kernel too."""

    def __init__(self, lanes: int, tunable: bool = False):
        self.lanes = lanes  # fp32 vector width of the target
        # tunable: tile sizes become MetaSchedule sampling instructions whose decisions are the defaults, so the
        # schedule is the same but the tuner can mutate the tiles (see split_tile)
        self.tunable = tunable

    def apply(self, func, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        try:
            blocks = root_blocks(sch)
            return self.schedule(sch, blocks) if blocks else None
        except (s_tir.ScheduleError, RuntimeError) as err:
            log.debug("%s declined a kernel: %s", type(self).__name__, (str(err).splitlines() or [""])[0])
            return None

    def schedule(self, sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
        """Schedule the kernel in SCH (top-level BLOCKS); None when this rule does not fit it."""
        raise NotImplementedError


def sub_exprs(expr) -> list:
    """The direct operand expressions of the TIR expression EXPR (a, b, value, call arguments)."""
    children = [getattr(expr, name, None) for name in ("a", "b", "value")] + list(getattr(expr, "args", []) or [])
    return [child for child in children if isinstance(child, tvm.ir.expr.Expr)]


def _operands(expr) -> list:
    """Every operand expression of EXPR: sub_exprs plus a Select's three and a load's indices."""
    extra = [getattr(expr, name, None) for name in ("condition", "true_value", "false_value")]
    extra += list(expr.indices) if isinstance(expr, tvm.ir.expr.TensorLoad) else []
    return sub_exprs(expr) + [e for e in extra if isinstance(e, tvm.ir.expr.Expr)]


def _count(expr, counted, memo: dict) -> int:
    """The nodes of EXPR, written out as a tree (shared operands counted each time they occur, as code
    generation sees them), for which COUNTED(node) holds; linear in the expression's DAG (MEMO by node)."""
    key = expr.__chandle__()
    if key not in memo:
        memo[key] = int(counted(expr)) + sum(_count(child, counted, memo) for child in _operands(expr))
    return memo[key]


def tree_size(expr) -> int:
    """The node count of EXPR written out as a tree."""
    return _count(expr, lambda _node: True, {})


def _loads(expr, buffer) -> int:
    """How many loads of BUFFER EXPR makes, written out as a tree."""
    return _count(expr, lambda node: isinstance(node, tvm.ir.expr.TensorLoad) and node.source.same_as(buffer), {})


IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")
MAX_INLINED_NODES = 2000  # the largest expression a block may grow to by inlining a producer into it


def _is_choice(node) -> bool:
    return isinstance(node, tirx.Select) or (isinstance(node, tvm.ir.expr.Call) and node.op.same_as(IF_THEN_ELSE))


def inline_fits(sch: s_tir.Schedule, block) -> bool:
    """True when BLOCK may be inlined into its consumers: each consumer's expression stays under MAX_INLINED_NODES,
    and a producer that chooses (Select: a Where, NaN / inf checks) is inlined only where it is read once. Each
    read of an inlined block copies its whole expression, and TVM's TIR simplifier grows exponentially with
    nested copies of one choice: a cast to int4 (NaN / inf checks, then the wrap of a float-to-int cast, each
    reading its input two or three times) took 17 s to lower over a 5x5 tensor, 0.1 s with the choices kept
    in buffers of their own."""
    producer = sch.get(block)
    value = getattr(producer.body, "value", None)
    if value is None or len(producer.writes) != 1:
        return True  # not a plain store: compute_inline decides
    size, written, chooses = tree_size(value), producer.writes[0].source, _count(value, _is_choice, {}) > 0
    for consumer in sch.get_consumers(block):
        stored = getattr(sch.get(consumer).body, "value", None)
        if stored is None:
            continue
        reads = _loads(stored, written)
        if tree_size(stored) + reads * size > MAX_INLINED_NODES or (chooses and reads > 1):
            return False
    return True


def uses(expr, var: tirx.Var, group: int | None = None) -> bool:
    """True when EXPR uses VAR other than inside VAR // GROUP (which is the same for every lane of a vector
    whose width divides GROUP)."""
    if isinstance(expr, tirx.Var):
        return expr.same_as(var)
    if group and isinstance(expr, tirx.FloorDiv) and isinstance(expr.a, tirx.Var) and expr.a.same_as(var) \
            and isinstance(expr.b, tirx.IntImm) and int(expr.b) == group:
        return False
    return any(uses(child, var, group) for child in sub_exprs(expr))


def domain_analyzer(iter_vars) -> tvm.sym.Analyzer:
    """An analyzer that knows each of ITER_VARS (a block's iterators) lies in its domain."""
    analyzer = tvm.sym.Analyzer()
    for iv in iter_vars:
        analyzer.bind(iv.var, iv.dom)
    return analyzer


def root_blocks(sch: s_tir.Schedule) -> list | None:
    """The top-level blocks of the scheduled function, or None when it has no root block (hand-written TIR)."""
    if not isinstance(sch.mod["main"].body, SBlockRealize):
        return None
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def const_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent when it is a constant, else None."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def split_tile(sch: s_tir.Schedule, loop, inner: int, tunable: bool) -> list:
    """Split LOOP into (outer, INNER). TUNABLE: as a perfect-tile sample whose decision is (outer, INNER), which
    MetaSchedule's tile mutator can change; a plain split when INNER does not divide the extent (guarded tile)."""
    extent = const_extent(sch, loop)
    if tunable and extent and extent % inner == 0:
        factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=MAX_SAMPLED_INNER,
                                          decision=[extent // inner, inner])
        return list(sch.split(loop, factors))
    return list(sch.split(loop, [None, inner]))


def vector_factors(extent: int, lanes: int) -> list[int]:
    """Vector widths worth trying on a contiguous axis of EXTENT, widest first: powers of two up to two full
    vectors that divide it (other widths, 40 say, made LLVM emit code 6-15x slower), or the whole axis when short."""
    factors = [f for f in (2 * lanes, lanes, lanes // 2, lanes // 4) if f >= 2 and extent % f == 0]
    return factors or ([extent] if extent <= 2 * lanes else [1])


def vector_factor(extent: int, lanes: int) -> int:
    """The widest of vector_factors(EXTENT, LANES)."""
    return vector_factors(extent, lanes)[0]


def vectorize_lanes(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize LOOP in vectors of LANES (split off when it is longer). A register tile's write-back vectorized
    whole was one vector as wide as the tile (384 lanes for an AMX block's row), which LLVM took apart into
    scalar loads and inserts of the epilogue's per-column scales: 80 instructions per 16 outputs."""
    if (const_extent(sch, loop) or 0) > lanes:
        loop = sch.split(loop, [None, lanes])[1]
    sch.vectorize(loop)


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
    # The vector width comes from the innermost axis alone, so a vector never straddles two rows: a padding
    # block's border test is then the same for every lane (straddling vectors ran 19x slower, MobileNetV2).
    factor = vector_factor(const_extent(sch, loops[-1]), lanes)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = const_extent(sch, fused)
    if factor > 1 and extent > factor:
        outer, inner = sch.split(fused, [None, factor])
        sch.parallel(outer)
        sch.vectorize(inner)
    elif factor > 1:
        sch.vectorize(fused)
    elif extent > 1:
        sch.parallel(fused)


def spatial_domain(sch: s_tir.Schedule, block) -> list[str]:
    """The extents of BLOCK's spatial iterators, as text (symbolic ones by name)."""
    return [str(iv.dom.extent) for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar]


def inline_forward(sch: s_tir.Schedule, blocks: list) -> list:
    """Inline each of BLOCKS into its consumers where inline_fits; return those that were not."""
    leftover = []
    for block in blocks:
        if not inline_fits(sch, block):
            leftover.append(block)
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            leftover.append(block)
    return leftover


def fuse_epilogue(sch: s_tir.Schedule, main, epilogue: list, lanes: int, write_back=None):
    """Fold the elementwise tail EPILOGUE into MAIN's write-back (the register tile's, in a contraction).

    Intermediate tail blocks are inlined forward first (one may feed several others, as in GELU), so only the
    last has to be inlined backwards into the write-back; what cannot be fused gets its own loop nest.
    Returns the block that writes the tile out: WRITE_BACK (MAIN's cache-write block, when the caller has one),
    or the tail's last block where that reads the tile's registers in its place (a tail over a smaller domain).
    """
    domain = spatial_domain(sch, main)
    if any(spatial_domain(sch, b) != domain for b in epilogue):
        # A tail over another domain (the slice after padded channels or rows) cannot be inlined into the
        # write-back, which would run past the output. Its blocks inline into each other where they can; a tail
        # that becomes one block then reads the tile's registers itself, in the write-back's place (Whisper's
        # 6 x 1500 x 1504 scores went to a whole padded intermediate first: 54 MB written, read back and written
        # again, a layer). Otherwise it keeps a loop nest of its own. One that writes the same domain into a
        # wider buffer (a piece of a concatenation, compiler/passes/concat_in_place.py) fuses like any other.
        tail = inline_forward(sch, epilogue[:-1]) + epilogue[-1:]
        if write_back is not None and len(tail) == 1:
            try:
                sch.compute_inline(write_back)
                return tail[0]
            except s_tir.ScheduleError:
                pass
        for block in tail:
            schedule_injective(sch, block, lanes)
        return write_back
    leftover = inline_forward(sch, epilogue[:-1])
    if epilogue and not leftover:
        try:
            sch.reverse_compute_inline(epilogue[-1])
        except s_tir.ScheduleError:
            leftover.append(epilogue[-1])
    elif epilogue:
        leftover.append(epilogue[-1])
    for block in leftover:
        schedule_injective(sch, block, lanes)
    return write_back
