"""Row softmax as one TIR kernel of explicit vector loops: per row, a max pass, an exp pass that stores exp(x - max)
and sums it, and a pass that scales by 1 / sum, the row staying in L1 between them.

TVM lowers softmax to four stages (max, exp, sum, divide) that dlight schedules one row element per step with
scalar reductions: Whisper-tiny's 6 x 1500 x 1500 scores took 22 ms a layer where ONNX Runtime takes under 3.
Schedule primitives cannot build vector accumulators over a row that the vector width does not divide (rfactor
needs a split whose predicate TVM 0.27's compute_at drops: docs/schedules.md), so the kernel is written as loops:
vector accumulators of LANES lanes over the whole vectors of the row, and the last LANES elements of the row as one
more vector that overlaps the previous one, its lanes already counted masked out of the sum and the scale (max
needs no mask). A row narrower than LANES is one vector of its own width. exp is TVM's fast_exp polynomial (the
one FastMathTransform gives softmax), relative error about 1e-7.

In: the shape of a float32 softmax over its last axis (viewed as [rows, width]) and the target's vector width.
Out: a scheduled PrimFunc softmax(x, y) that kiln.RowKernels (compiler/passes/row_kernels.py) calls.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .rows import RowSplit, loop_kernel

# TVM's fast_exp (topi): e^x = 2^n * p(r), r = x - n ln 2, p a degree-7 polynomial in Horner form
_EXP_COEFFS = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
               5.0000001201e-1)
_EXP_CLAMP = 88.3762626647949
_LOG2_E = 1.44269504088896341
_LN_2 = 0.693147180559945


def fast_exp(value):
    """e^VALUE for a float32 TIR expression (scalar or vector), as TVM's fast_exp computes it."""
    x = T.max(T.min(value, T.float32(_EXP_CLAMP)), T.float32(-_EXP_CLAMP))
    n = T.floor(x * T.float32(_LOG2_E) + T.float32(0.5))
    r = x - n * T.float32(_LN_2)
    poly = T.float32(_EXP_COEFFS[0])
    for coeff in _EXP_COEFFS[1:]:
        poly = poly * r + T.float32(coeff)
    two_to_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return two_to_n * (poly * r * r + r + T.float32(1.0))


def row_softmax(shape: list[int], lanes: int) -> tirx.PrimFunc:
    """softmax(x, y) over the last axis of a float32 tensor of SHAPE, row by row in vectors of LANES lanes (see
    the module docstring), scheduled already (rows.loop_kernel)."""
    return loop_kernel(_kernel, shape, lanes)


def _kernel(shape: list, split: RowSplit) -> tirx.PrimFunc:
    rows, width, lanes, vectors = split.rows, split.width, split.lanes, split.vectors
    last, counted, has_tail = split.last, split.counted, split.has_tail
    lowest = T.float32(-3.4028234663852886e38)

    # "global" scope: a small constant-size buffer in a parallel loop becomes a stack slot; "local" got a
    # workspace allocation (a heap call) per row.
    @T.prim_func(private=True, s_tir=True)
    def softmax(x_nd: T.Buffer(shape, "float32"), y_nd: T.Buffer(shape, "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            x = T.decl_buffer((rows, width), "float32", data=x_nd.data)
            y = T.decl_buffer((rows, width), "float32", data=y_nd.data)
            for r in T.parallel(rows):
                acc = T.decl_buffer((lanes,), "float32", scope="global")
                top = T.decl_buffer((1,), "float32", scope="global")
                total = T.decl_buffer((1,), "float32", scope="global")
                for j in T.vectorized(lanes):
                    acc[j] = x[r, j]
                for v in range(1, vectors):
                    for j in T.vectorized(lanes):
                        acc[j] = T.max(acc[j], x[r, v * lanes + j])
                if has_tail:
                    for j in T.vectorized(lanes):
                        acc[j] = T.max(acc[j], x[r, last + j])
                top[0] = lowest
                for j in range(lanes):
                    top[0] = T.max(top[0], acc[j])
                for j in T.vectorized(lanes):
                    acc[j] = T.float32(0)
                for v in range(vectors):
                    for j in T.vectorized(lanes):
                        y[r, v * lanes + j] = fast_exp(x[r, v * lanes + j] - top[0])
                        acc[j] = acc[j] + y[r, v * lanes + j]
                if has_tail:
                    for j in T.vectorized(lanes):
                        y[r, last + j] = fast_exp(x[r, last + j] - top[0])
                        acc[j] = acc[j] + T.if_then_else(j >= counted, y[r, last + j], T.float32(0))
                total[0] = T.float32(0)
                for j in range(lanes):
                    total[0] = total[0] + acc[j]
                total[0] = T.float32(1) / total[0]
                for v in range(vectors):
                    for j in T.vectorized(lanes):
                        y[r, v * lanes + j] = y[r, v * lanes + j] * total[0]
                if has_tail:
                    for j in T.vectorized(lanes):
                        y[r, last + j] = T.if_then_else(j >= counted, y[r, last + j] * total[0], y[r, last + j])

    return softmax
