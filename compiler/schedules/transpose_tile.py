"""A tile of a transpose in vector registers. SIZE rows of WIDTH elements (WIDTH <= SIZE, any count) are loaded
as vectors of SIZE lanes (in power-of-two pieces, the rest of the lanes zero), swapped in log2(SIZE) stages of
two-vector shuffles (one vpermt2ps each on AVX-512), and WIDTH vectors of SIZE elements are stored: whole cache
lines when SIZE is 16 float32 lanes. Registered as tensor intrinsics, on first use, for the transpose that a
depthwise convolution computes of its NCHW input (transposed_input.py).

LLVM, given the same tile as loops (vector stores of a strided read), built each output vector one element at
a time (vmovss / vinsertps) or with about one shuffle per element.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from ..tvmscript import quick_parse

DTYPES = ("float32", "int32", "uint32")  # 4-byte elements

_registered: set[str] = set()


def intrinsic_name(size: int, width: int, dtype: str, gap_in: int = 0, gap_out: int = 0) -> str:
    """The name of the tile that transposes SIZE rows of WIDTH DTYPE elements into WIDTH rows of SIZE, whose
    input and output regions have GAP_IN / GAP_OUT axes of extent 1 between their two tile axes (an NCHW tile
    over C and W has H between them); registered on first use."""
    name = f"kiln_transpose_{size}x{width}_{dtype}_gaps{gap_in}{gap_out}"
    if name not in _registered:
        with quick_parse():
            TensorIntrin.register(name, *_intrinsic(size, width, dtype, gap_in, gap_out), override=True)
        _registered.add(name)
    return name


def shuffle_stages(size: int) -> list[tuple[int, list[int], list[int]]]:
    """The network that transposes SIZE vectors of SIZE lanes: per stage, (distance, lanes of the lower vector,
    lanes of the upper one). At distance B, vector r (r & B == 0) and vector r + B swap their off-diagonal B x B
    blocks: each result lane picks lane i of the pair's concatenation (i < SIZE: vector r; else r + B)."""
    stages, distance = [], size // 2
    while distance:
        lower = [lane if not lane & distance else size + lane - distance for lane in range(size)]
        upper = [lane + distance if not lane & distance else size + lane for lane in range(size)]
        stages.append((distance, lower, upper))
        distance //= 2
    return stages


def _intrinsic(size: int, width: int, dtype: str, gap_in: int, gap_out: int) -> tuple:
    """(description, implementation) PrimFuncs of one tile: C[i, j] = A[j, i] for i < WIDTH, j < SIZE, each
    buffer with its gap of unit axes between the tile's two."""
    shape_in, shape_out = (size, *[1] * gap_in, width), (width, *[1] * gap_out, size)
    align = tvm.runtime.DataType(dtype).bits // 8  # a model's input may sit at any element (ReadInputsInPlace)
    whole_in, whole_out = tuple(slice(0, n) for n in shape_in), tuple(slice(0, n) for n in shape_out)

    def at_in(i, j):
        return (i, *[0] * gap_in, j)

    def at_out(i, j):
        return (i, *[0] * gap_out, j)

    def strides(shape):  # a variable per axis but the last, as a region of any larger buffer has
        return [*[tirx.Var("stride", "int32") for _ in shape[1:]], 1]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, shape_in, dtype, offset_factor=1, strides=strides(shape_in), align=align)
        C = T.match_buffer(c, shape_out, dtype, offset_factor=1, strides=strides(shape_out), align=align)
        with T.sblock("root"):
            T.reads(A[whole_in])
            T.writes(C[whole_out])
            for i, j in T.grid(width, size):
                with T.sblock("transpose"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[at_out(vi, vj)] = A[at_in(vj, vi)]

    # the implementation: the description with its loop nest replaced by the shuffle network (same buffers)
    root = desc.body.block
    network = _network(root.reads[0].source, root.writes[0].source, size, width, dtype)
    impl = tvm_ffi.structural_map(desc, [(tirx.For, lambda _stmt: network)], order="pre")
    return desc, impl


def _int(value: int):
    return tirx.IntImm("int32", value)


def _row(source: tirx.Buffer, row: int, size: int, width: int, dtype: str):
    """Row ROW of SOURCE (WIDTH elements) as a vector of SIZE lanes: loaded in power-of-two pieces, the lanes
    past WIDTH zero (nothing is read past the row)."""
    middle = [_int(0)] * (len(source.shape) - 2)
    pieces, start = [], 0
    for bits in range(width.bit_length() - 1, -1, -1):
        lanes = 1 << bits
        if width & lanes:
            at = tirx.Ramp(_int(start), _int(1), lanes) if lanes > 1 else _int(start)
            pieces.append(tirx.BufferLoad(source, [_int(row), *middle, at]))
            start += lanes
    if width == size:
        return pieces[0]
    zero = tirx.FloatImm(dtype, 0.0) if "float" in dtype else tirx.IntImm(dtype, 0)
    pieces.append(zero if size - width == 1 else tirx.Broadcast(zero, size - width))  # (no 1-lane vectors)
    return tirx.Shuffle(pieces, [_int(i) for i in range(size)])


def _network(source: tirx.Buffer, target: tirx.Buffer, size: int, width: int, dtype: str) -> tirx.Stmt:
    """Statements that load SOURCE's rows, bind each stage's shuffles to variables (so each shuffle is emitted
    once), and store the first WIDTH transposed rows into TARGET."""
    vector = f"{dtype}x{size}"
    stmts, rows = [], []
    for j in range(size):
        var = tirx.Var(f"row{j}", vector)
        stmts.append(tirx.Bind(var, _row(source, j, size, width, dtype)))
        rows.append(var)
    for step, (distance, lower, upper) in enumerate(shuffle_stages(size)):
        swapped = list(rows)
        for r in range(size):
            if r & distance:
                continue
            pair = [rows[r], rows[r + distance]]
            for index, picks in ((r, lower), (r + distance, upper)):
                var = tirx.Var(f"s{step}_{index}", vector)
                stmts.append(tirx.Bind(var, tirx.Shuffle(pair, [_int(i) for i in picks])))
                swapped[index] = var
        rows = swapped
    middle = [_int(0)] * (len(target.shape) - 2)
    lanes = tirx.Ramp(_int(0), _int(1), size)
    stmts += [tirx.BufferStore(target, row, [_int(i), *middle, lanes]) for i, row in enumerate(rows[:width])]
    return tirx.SeqStmt(stmts)
