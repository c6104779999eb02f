"""Packed-weight computes: constant weights stored in panels of G output columns, and the matmul / NHWC
convolution that read them so (te compute definitions; the schedules that run them are compiler/schedules/).

In: te tensors of activations and of weights already packed ([N / G, K, G] for a matmul, [O / G, H, W, I, G] for
a convolution: see pack_columns). Out: te tensors of the results. kiln.PackWeights (compiler/passes/pack_weights.py)
decides where they are used.
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi

# Columns per packed panel, preferred first; each a multiple of every vector width Kiln uses. Measured: matmuls
# ran the same with 32- and 64-wide panels, a 3x3 convolution faster with 32 (7 x 32 tiles: 304 vs 257 GFLOP/s).
MATMUL_PANELS = (64, 32, 16)
CONV_PANELS = (32,)


def panel_width(cols: int, widths: tuple[int, ...]) -> int | None:
    """The first of WIDTHS that packs a weight COLS wide into two panels or more; None when none does."""
    return next((g for g in widths if cols % g == 0 and cols > g), None)


def pack_columns(weight: np.ndarray, width: int) -> np.ndarray:
    """WEIGHT [..., N] as [N / WIDTH, ..., WIDTH]: panel-major, each panel contiguous."""
    panels = weight.reshape(*weight.shape[:-1], weight.shape[-1] // width, width)
    return np.ascontiguousarray(np.moveaxis(panels, -2, 0))


def packed_matmul(x: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """x[..., K] @ W[K, N] with W given packed as [N / G, K, G]."""
    panels, depth, width = (int(d) for d in packed.shape)
    k = te.reduce_axis((0, depth), name="k")

    def element(*index):
        col = index[-1]
        return te.sum(x[(*index[:-1], k)] * packed[col // width, k, col % width], axis=k)

    return te.compute((*x.shape[:-1], panels * width), element, name="packed_matmul")


def padded_window(x: te.Tensor, kernel: tuple[int, int], strides, padding, dilation, extra_channels: int = 0,
                  pad_value=0) -> tuple[te.Tensor, int, int]:
    """(NHWC X padded by PADDING (top, left, bottom, right) and EXTRA_CHANNELS at the end, all PAD_VALUE; the
    output height; the output width) of a convolution with KERNEL (height, width), STRIDES and DILATION."""
    top, left, bottom, right = padding
    if any(padding) or extra_channels:
        x = topi.nn.pad(x, (0, top, left, 0), (0, bottom, right, extra_channels), pad_value=pad_value, name="pad")
    (kh_size, kw_size), (sh, sw), (dh, dw) = kernel, strides, dilation
    _, height, breadth, _ = x.shape
    return x, (height - (kh_size - 1) * dh - 1) // sh + 1, (breadth - (kw_size - 1) * dw - 1) // sw + 1


def packed_conv2d(x: te.Tensor, packed: te.Tensor, strides, padding, dilation) -> te.Tensor:
    """NHWC convolution of X with HWIO weights given packed as [O / G, H, W, I, G]; PADDING is (top, left,
    bottom, right)."""
    panels, kh_size, kw_size, depth, width = (int(d) for d in packed.shape)
    x, out_h, out_w = padded_window(x, (kh_size, kw_size), strides, padding, dilation)
    (sh, sw), (dh, dw) = strides, dilation
    n = x.shape[0]
    kh, kw = te.reduce_axis((0, kh_size), "kh"), te.reduce_axis((0, kw_size), "kw")
    ci = te.reduce_axis((0, depth), "ci")

    def element(b, h, w, co):
        pixel = x[b, h * sh + kh * dh, w * sw + kw * dw, ci]
        return te.sum(pixel * packed[co // width, kh, kw, ci, co % width], axis=[kh, kw, ci])

    return te.compute((n, out_h, out_w, panels * width), element, name="packed_conv2d")
