"""Winograd convolution F(4x4, 3x3) for NHWC 3x3 stride-1 convolutions with constant float32 weights.

A direct 3x3 convolution does 9 multiply-adds per input channel and output; Winograd's minimal filtering computes
a tile of 4 x 4 outputs from a 6 x 6 input patch with 36 multiplies per channel pair instead of 144, in three
kernels:
    input transform   V[ab, n, t, c] = (B^T d B)[a, b]    d: the 6 x 6 input patch of tile t, channel c
    batched GEMM      M[ab, n, t, k] = sum_c V[ab, n, t, c] * U[ab, c, k]     U = G g G^T, done at compile time
    output transform  Y[n, h, w, k]  = (A^T M A)[h % 4, w % 4] of tile (h // 4, w // 4)
The GEMM is Kiln's ordinary contraction (weights packed in panels). Each transform is two separable steps
(B^T d, then that times B; M A, then A^T times that), each written out term by term: only the nonzero
coefficients, picked by the tile position, which the schedule unrolls (compiler/schedules/winograd.py), so
they cost about a pass over memory rather than arithmetic. ONNX Runtime's fp32 convolutions have no Winograd
path: this is where Kiln can beat a direct kernel that already runs near the machine's fp32 peak.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

# Lavin & Gray's F(4x4, 3x3) (interpolation points 0, +-1, +-2 and infinity).
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)
TILE = AT.shape[0]  # outputs per tile side
ALPHA = AT.shape[1]  # inputs per tile side
# the schedule rule finds the transforms' blocks by name
INPUT_BLOCK, ROWS_BLOCK, OUTPUT_BLOCK, COLUMNS_BLOCK = "winograd_input", "winograd_rows", "winograd_output", \
    "winograd_columns"
# Below MIN_TILES output tiles per image the GEMM's rows are too few to pay for reading weights 4x the size
# (36 / 9): 3 layers 7x7x512 -> 512 (4 tiles) ran 3.53 ms against 3.70 direct, with 113 MB of weights instead
# of 28; at 14x14x256 (16 tiles) 2.0 against 4.7 ms, at 28x28x128 2.0 against 3.5, at 56x56x64 1.9 against 4.1.
MIN_TILES = 16
MIN_CHANNELS = 16  # the GEMM's reduction: fewer input channels leave the transforms as the whole cost


def fits(in_channels: int, out_h: int, out_w: int) -> bool:
    """Whether Winograd pays for a 3x3 stride-1 convolution with IN_CHANNELS and an OUT_H x OUT_W output."""
    down, across = tiles(out_h, out_w)
    return in_channels >= MIN_CHANNELS and down * across >= MIN_TILES


def transformed_weights(weight: np.ndarray) -> np.ndarray:
    """HWIO 3x3 WEIGHT [3, 3, C, K] as U = G g G^T, laid out [36, C, K]."""
    u = np.einsum("ai,ijck,bj->abck", G, weight.astype(np.float64), G)
    return u.reshape(ALPHA * ALPHA, *weight.shape[2:]).astype(np.float32)


def tiles(out_h: int, out_w: int) -> tuple[int, int]:
    """Tiles down and across an OUT_H x OUT_W output."""
    return -(-out_h // TILE), -(-out_w // TILE)


def _combination(terms: list[tuple[float, object]]):
    """sum of coefficient * value over TERMS, with the +-1 coefficients as plain adds and subtracts."""
    total = None
    for coefficient, value in terms:
        if abs(coefficient) != 1:
            value = value * tirx.const(coefficient, "float32")
        if total is None:
            total = -value if coefficient == -1 else value
        elif coefficient == -1:
            total = total - value
        else:
            total = total + value
    return total


def _pick(index, choices: list):
    """CHOICES[INDEX] as a chain of selects; the schedule unrolls INDEX, so the chain folds to one choice."""
    chosen = choices[-1]
    for position in range(len(choices) - 2, -1, -1):
        chosen = tirx.Select(index == position, choices[position], chosen)
    return chosen


def _row_combination(matrix: np.ndarray, row: int, value) -> object:
    """sum over i of MATRIX[row, i] * VALUE(i), nonzero terms only."""
    return _combination([(matrix[row, i], value(i)) for i in range(matrix.shape[1]) if matrix[row, i]])


def input_transform(x: te.Tensor, padding) -> te.Tensor:
    """V[ab, n, t, c] of NHWC X for a 3x3 stride-1 convolution with PADDING (top, left, bottom, right), in two
    separable steps: R = B^T d (ROWS_BLOCK: R[a, j] for one tile) then V = R B."""
    _, height, width, channels = x.shape
    top, left, bottom, right = padding
    down, across = tiles(int(height) + top + bottom - 2, int(width) + left + right - 2)
    padded = topi.nn.pad(x, (0, top, left, 0),
                         (0, down * TILE + 2 - int(height) - top, across * TILE + 2 - int(width) - left, 0),
                         name="pad")

    def row_step(a, j, n, t, c):
        row, col = t // across * TILE, t % across * TILE
        return _pick(a, [_row_combination(BT, r, lambda i: padded[n, row + i, col + j, c]) for r in range(ALPHA)])

    rows = te.compute((ALPHA, ALPHA, x.shape[0], down * across, channels), row_step, name=ROWS_BLOCK)

    def element(ab, n, t, c):
        return _pick(ab % ALPHA, [_row_combination(BT, b, lambda j: rows[ab // ALPHA, j, n, t, c])
                                  for b in range(ALPHA)])

    return te.compute((ALPHA * ALPHA, x.shape[0], down * across, channels), element, name=INPUT_BLOCK)


def batched_gemm(v: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """M[ab, n, t, k] = sum_c V[ab, n, t, c] * U[ab, c, k], with U packed as [K / G, ab, C, G]."""
    panels, _, depth, width = (int(d) for d in packed.shape)
    c = te.reduce_axis((0, depth), "c")
    positions, n, count, _ = v.shape
    return te.compute((positions, n, count, panels * width),
                      lambda ab, b, t, k: te.sum(v[ab, b, t, c] * packed[k // width, ab, c, k % width], axis=c),
                      name="winograd_gemm")


def output_transform(m: te.Tensor, out_h: int, out_w: int) -> te.Tensor:
    """Y[n, h, w, k] (NHWC, OUT_H x OUT_W) from M[ab, n, t, k], in two separable steps: C = M A (COLUMNS_BLOCK:
    C[a, v] for one tile) then Y = A^T C."""
    _, across = tiles(out_h, out_w)
    _, n, count, channels = m.shape

    def column_step(a, v, batch, t, k):
        return _pick(v, [_row_combination(AT, col, lambda b: m[a * ALPHA + b, batch, t, k]) for col in range(TILE)])

    columns = te.compute((ALPHA, TILE, n, count, channels), column_step, name=COLUMNS_BLOCK)

    def element(batch, h, w, k):
        tile = h // TILE * across + w // TILE
        return _pick(h % TILE, [_row_combination(AT, u, lambda a: columns[a, w % TILE, batch, tile, k])
                                for u in range(TILE)])

    return te.compute((n, out_h, out_w, channels), element, name=OUTPUT_BLOCK)
