"""Layer norm over the last axis as one TIR kernel of explicit vector loops, as the row softmax
(compiler/kernels/softmax.py) is written: per row, a pass that sums x, a pass that sums (x - mean)^2, and a pass
that writes (x - mean) / sqrt(var + eps) * gamma + beta, the row in L1 between them, rows in parallel.

dlight's reduction schedule of TVM's layer norm ran Whisper-tiny's 1500 x 384 rows at 0.55 ms a call (4.9 ms of
its run, ONNX Runtime 3.9 for its LayerNormalization and SkipLayerNormalization); this kernel takes 0.22. The
last partial vector of a row overlaps the previous one with its counted lanes masked out of the sums (the write
needs no mask: it writes the same values twice).

In: the shape of a float32 layer norm over its last axis (viewed as [rows, width]), its epsilon, and the target's
vector width. Out: a scheduled PrimFunc layer_norm(x, gamma, beta, y) that kiln.RowKernels
(compiler/passes/row_kernels.py) calls.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .rows import RowSplit, loop_kernel


def row_layer_norm(shape: list[int], epsilon: float, lanes: int, zero_rows: int = 0) -> tirx.PrimFunc:
    """layer_norm(x, gamma, beta, y) over the last axis of a float32 tensor of SHAPE, in vectors of LANES lanes
    (see the module docstring), scheduled already (rows.loop_kernel). ZERO_ROWS: y has that many more rows
    (SHAPE has one row dimension: [1, rows, width] or [rows, width]), written as zeros: the layer norm and the
    kiln.PadRows pad after it in one kernel."""
    assert not zero_rows or all(d == 1 for d in shape[:-2]), "padded rows need a single row dimension"
    return loop_kernel(_kernel, shape, lanes, epsilon, zero_rows)


def _kernel(shape: list, split: RowSplit, epsilon: float, zero_rows: int) -> tirx.PrimFunc:
    rows, width, lanes, vectors = split.rows, split.width, split.lanes, split.vectors
    last, counted, has_tail = split.last, split.counted, split.has_tail
    inverse_width = T.float32(1.0 / width)
    eps = T.float32(epsilon)
    params = [tirx.IntImm("int64", width)]
    out_shape = [*shape[:-2], tirx.IntImm("int64", int(shape[-2]) + zero_rows), shape[-1]]
    zero_elements = zero_rows * width

    # "global" scope for the small buffers: a stack slot, not a workspace allocation per row (see softmax.py)
    @T.prim_func(private=True, s_tir=True)
    def layer_norm(x_nd: T.Buffer(shape, "float32"), gamma: T.Buffer(params, "float32"),
                   beta: T.Buffer(params, "float32"), y_nd: T.Buffer(out_shape, "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            x = T.decl_buffer((rows, width), "float32", data=x_nd.data)
            y = T.decl_buffer((rows, width), "float32", data=y_nd.data)
            y_flat = T.decl_buffer((rows * width + zero_elements,), "float32", data=y_nd.data)
            for i in range(zero_elements):
                y_flat[rows * width + i] = T.float32(0)
            for r in T.parallel(rows):
                acc = T.decl_buffer((lanes,), "float32", scope="global")
                mean = T.decl_buffer((1,), "float32", scope="global")
                scale = T.decl_buffer((1,), "float32", scope="global")
                for j in T.vectorized(lanes):
                    acc[j] = T.float32(0)
                for v in range(vectors):
                    for j in T.vectorized(lanes):
                        acc[j] = acc[j] + x[r, v * lanes + j]
                if has_tail:
                    for j in T.vectorized(lanes):
                        acc[j] = acc[j] + T.if_then_else(j >= counted, x[r, last + j], T.float32(0))
                mean[0] = T.float32(0)
                for j in range(lanes):
                    mean[0] = mean[0] + acc[j]
                mean[0] = mean[0] * inverse_width
                for j in T.vectorized(lanes):
                    acc[j] = T.float32(0)
                for v in range(vectors):
                    for j in T.vectorized(lanes):
                        acc[j] = acc[j] + (x[r, v * lanes + j] - mean[0]) * (x[r, v * lanes + j] - mean[0])
                if has_tail:
                    for j in T.vectorized(lanes):
                        acc[j] = acc[j] + T.if_then_else(
                            j >= counted, (x[r, last + j] - mean[0]) * (x[r, last + j] - mean[0]), T.float32(0))
                scale[0] = T.float32(0)
                for j in range(lanes):
                    scale[0] = scale[0] + acc[j]
                scale[0] = T.float32(1) / T.sqrt(scale[0] * inverse_width + eps)
                for v in range(vectors):
                    for j in T.vectorized(lanes):
                        y[r, v * lanes + j] = (x[r, v * lanes + j] - mean[0]) * scale[0] * gamma[v * lanes + j] \
                            + beta[v * lanes + j]
                if has_tail:
                    for j in T.vectorized(lanes):
                        y[r, last + j] = (x[r, last + j] - mean[0]) * scale[0] * gamma[last + j] + beta[last + j]

    return layer_norm
