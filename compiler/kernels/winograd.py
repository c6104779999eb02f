"""Winograd convolutions F(4x4, 3x3) and F(2x2, 3x3) for NHWC 3x3 stride-1 convolutions with constant float32
weights.

A direct 3x3 convolution does 9 multiply-adds per input channel and output; Winograd's minimal filtering computes
a tile of m x m outputs from an (m + 2) x (m + 2) input patch with (m + 2)^2 multiplies per channel pair instead
of 9 m^2 (F(4x4): 36 instead of 144; F(2x2): 16 instead of 36), in three kernels:
    input transform   V[ab, n, t, c] = (B^T d B)[a, b]    d: the input patch of tile t, channel c
    batched GEMM      M[ab, n, t, k] = sum_c V[ab, n, t, c] * U[ab, c, k]     U = G g G^T, done at compile time
    output transform  Y[n, h, w, k]  = (A^T M A)[h % m, w % m] of tile (h // m, w // m)
The GEMM is Kiln's ordinary contraction (weights packed in panels). Each transform is two separable steps
(B^T d, then that times B; M A, then A^T times that), each written out term by term: only the nonzero
coefficients, picked by the tile position, which the schedule unrolls (compiler/schedules/winograd.py), so
they cost about a pass over memory rather than arithmetic. ONNX Runtime's fp32 convolutions have no Winograd
path: this is where Kiln can beat a direct kernel that already runs near the machine's fp32 peak.

The price is weights (m + 2)^2 / 9 times the size (F(4x4) 4x, F(2x2) 1.8x), each read once per image by a GEMM
of only as many rows as there are tiles: at batch 1 the weights stream from memory each run, and a GEMM of few
rows waits on them (choose()).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx, topi


@dataclass(frozen=True)
class Variant:
    """F(m x m, 3 x 3): its input (BT), weight (G) and output (AT) transforms."""

    bt: np.ndarray
    g: np.ndarray
    at: np.ndarray

    @property
    def tile(self) -> int:
        """Outputs per tile side (m)."""
        return self.at.shape[0]

    @property
    def alpha(self) -> int:
        """Inputs per tile side (m + 2)."""
        return self.at.shape[1]


# Lavin & Gray's F(4x4, 3x3) (interpolation points 0, +-1, +-2 and infinity).
F4 = Variant(bt=np.array([[4, 0, -5, 0, 1, 0],
                          [0, -4, -4, 1, 1, 0],
                          [0, 4, -4, -1, 1, 0],
                          [0, -2, -1, 2, 1, 0],
                          [0, 2, -1, -2, 1, 0],
                          [0, 4, 0, -5, 0, 1]], dtype=np.float64),
             g=np.array([[1 / 4, 0, 0],
                         [-1 / 6, -1 / 6, -1 / 6],
                         [-1 / 6, 1 / 6, -1 / 6],
                         [1 / 24, 1 / 12, 1 / 6],
                         [1 / 24, -1 / 12, 1 / 6],
                         [0, 0, 1]], dtype=np.float64),
             at=np.array([[1, 1, 1, 1, 1, 0],
                          [0, 1, -1, 2, -2, 0],
                          [0, 1, 1, 4, 4, 0],
                          [0, 1, -1, 8, -8, 1]], dtype=np.float64))
# F(2x2, 3x3) (points 0, +-1 and infinity): every coefficient of B and A is 0 or +-1.
F2 = Variant(bt=np.array([[1, 0, -1, 0],
                          [0, 1, 1, 0],
                          [0, -1, 1, 0],
                          [0, 1, 0, -1]], dtype=np.float64),
             g=np.array([[1, 0, 0],
                         [1 / 2, 1 / 2, 1 / 2],
                         [1 / 2, -1 / 2, 1 / 2],
                         [0, 0, 1]], dtype=np.float64),
             at=np.array([[1, 1, 1, 0],
                          [0, 1, -1, -1]], dtype=np.float64))
VARIANTS = {variant.tile: variant for variant in (F4, F2)}

# the schedule rule finds the transforms' blocks by name
INPUT_BLOCK, ROWS_BLOCK, OUTPUT_BLOCK, COLUMNS_BLOCK = "winograd_input", "winograd_rows", "winograd_output", \
    "winograd_columns"
# The GEMM's rows are the output tiles of an image; each weight it reads serves that many of them. Measured in
# ResNet-50 (2 threads, weights cold as in a whole run): 14x14x256 -> 256 with F(4x4) (16 tiles) 0.82 ms a layer,
# the direct convolution 0.80, ONNX Runtime 0.70; F(2x2) has 49 tiles there. 7x7x512 -> 512 stays direct (F(4x4):
# 3 layers 3.53 ms against 3.70, with 113 MB of weights instead of 28).
MIN_TILES = {4: 36, 2: 36}
MIN_CHANNELS = 16  # the GEMM's reduction: fewer input channels leave the transforms as the whole cost


def choose(in_channels: int, out_h: int, out_w: int) -> Variant | None:
    """The Winograd variant that pays for a 3x3 stride-1 convolution with IN_CHANNELS and an OUT_H x OUT_W output:
    F(4x4) where it has tiles enough, else F(2x2) where that has, else None (the direct convolution)."""
    if in_channels < MIN_CHANNELS:
        return None
    for variant in (F4, F2):
        down, across = tiles(out_h, out_w, variant.tile)
        if down * across >= MIN_TILES[variant.tile]:
            return variant
    return None


def transformed_weights(weight: np.ndarray, variant: Variant) -> np.ndarray:
    """HWIO 3x3 WEIGHT [3, 3, C, K] as U = G g G^T, laid out [alpha^2, C, K]."""
    u = np.einsum("ai,ijck,bj->abck", variant.g, weight.astype(np.float64), variant.g)
    return u.reshape(variant.alpha * variant.alpha, *weight.shape[2:]).astype(np.float32)


def tiles(out_h: int, out_w: int, tile: int) -> tuple[int, int]:
    """Tiles of TILE x TILE outputs down and across an OUT_H x OUT_W output."""
    return -(-out_h // tile), -(-out_w // tile)


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


def input_transform(x: te.Tensor, padding, tile: int) -> te.Tensor:
    """V[ab, n, t, c] of NHWC X for a 3x3 stride-1 convolution with PADDING (top, left, bottom, right) by
    F(TILE x TILE, 3x3), in two separable steps: R = B^T d (ROWS_BLOCK: R[a, j] for one tile) then V = R B."""
    bt, alpha = VARIANTS[tile].bt, VARIANTS[tile].alpha
    _, height, width, channels = x.shape
    top, left, bottom, right = padding
    down, across = tiles(int(height) + top + bottom - 2, int(width) + left + right - 2, tile)
    padded = topi.nn.pad(x, (0, top, left, 0),
                         (0, down * tile + 2 - int(height) - top, across * tile + 2 - int(width) - left, 0),
                         name="pad")

    def row_step(a, j, n, t, c):
        row, col = t // across * tile, t % across * tile
        return _pick(a, [_row_combination(bt, r, lambda i: padded[n, row + i, col + j, c]) for r in range(alpha)])

    rows = te.compute((alpha, alpha, x.shape[0], down * across, channels), row_step, name=ROWS_BLOCK)

    def element(ab, n, t, c):
        return _pick(ab % alpha, [_row_combination(bt, b, lambda j: rows[ab // alpha, j, n, t, c])
                                  for b in range(alpha)])

    return te.compute((alpha * alpha, x.shape[0], down * across, channels), element, name=INPUT_BLOCK)


def batched_gemm(v: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """M[ab, n, t, k] = sum_c V[ab, n, t, c] * U[ab, c, k], with U packed as [K / G, ab, C, G]."""
    panels, _, depth, width = (int(d) for d in packed.shape)
    c = te.reduce_axis((0, depth), "c")
    positions, n, count, _ = v.shape
    return te.compute((positions, n, count, panels * width),
                      lambda ab, b, t, k: te.sum(v[ab, b, t, c] * packed[k // width, ab, c, k % width], axis=c),
                      name="winograd_gemm")


def output_transform(m: te.Tensor, out_h: int, out_w: int, tile: int) -> te.Tensor:
    """Y[n, h, w, k] (NHWC, OUT_H x OUT_W) from M[ab, n, t, k] of F(TILE x TILE, 3x3), in two separable steps:
    C = M A (COLUMNS_BLOCK: C[a, v] for one tile) then Y = A^T C."""
    at, alpha = VARIANTS[tile].at, VARIANTS[tile].alpha
    _, across = tiles(out_h, out_w, tile)
    _, n, count, channels = m.shape

    def column_step(a, v, batch, t, k):
        return _pick(v, [_row_combination(at, col, lambda b: m[a * alpha + b, batch, t, k]) for col in range(tile)])

    columns = te.compute((alpha, tile, n, count, channels), column_step, name=COLUMNS_BLOCK)

    def element(batch, h, w, k):
        index = h // tile * across + w // tile
        return _pick(h % tile, [_row_combination(at, u, lambda a: columns[a, w % tile, batch, index, k])
                                for u in range(tile)])

    return te.compute((n, out_h, out_w, channels), element, name=OUTPUT_BLOCK)
