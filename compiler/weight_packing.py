"""kiln.PackWeights: constant weights of matmuls ([K, N]) and convolutions (HWIO) are stored packed in panels of G
output columns, [N / G, K, G] and [O / G, H, W, I, G], at compile time; the kernels read them packed.

Unpacked, the register tile of the contraction schedule reads G-wide slices N floats apart at each reduction
step (one 4 KB page per step when N is 1024 or more), which defeats the hardware prefetchers and the cache.
Packed, a tile's whole weight panel is one contiguous block. Measured on a 2-core Xeon with AVX-512 (2 threads):
matmul 128x768 @ 768x3072 from 7.2 to 3.0 ms, 128x3072 @ 3072x768 from 7.3 to 2.3 ms; a 3x3 convolution
14x14x256 -> 256 from 2.05 to 0.76 ms.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from . import winograd
from .relax_util import const_value, op_name, rewrite_relax_functions

# Columns per packed panel, preferred first; each a multiple of every vector width Kiln uses. Measured: matmuls
# ran the same with 32- and 64-wide panels, a 3x3 convolution faster with 32 (7 x 32 tiles: 304 vs 257 GFLOP/s).
MATMUL_PANELS = (64, 32, 16)
CONV_PANELS = (32,)
OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind kOutEWiseFusable: epilogues (bias, GELU) fuse into the kernel
WINOGRAD_ATTR = "kiln.winograd"  # module attribute: False keeps every convolution direct (kiln compile --no-winograd)


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


@mutator
class _WeightPacker(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.winograd = bool((mod.attrs or {}).get(WINOGRAD_ATTR, True))

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        weight = const_value(call.args[1]) if name in ("relax.matmul", "relax.nn.conv2d") else None
        if weight is None or weight.dtype != np.float32 or getattr(call.args[0].ty, "dtype", None) != "float32":
            return call
        if name == "relax.matmul" and weight.ndim == 2 and getattr(call.args[0].ty, "ndim", 0) >= 1:
            width = panel_width(weight.shape[1], MATMUL_PANELS)
            if width:
                return self._emit(packed_matmul, call.args[0], pack_columns(weight, width), "packed_matmul")
        if name == "relax.nn.conv2d" and self._packable_conv(call.attrs):
            width = panel_width(weight.shape[-1], CONV_PANELS)
            if width and self.winograd and self._winograd_fits(call, weight):
                return self._winograd(call, weight, width)
            if width:
                attrs = call.attrs
                return self._emit(packed_conv2d, call.args[0], pack_columns(weight, width), "packed_conv2d",
                                  [int(v) for v in attrs.strides], [int(v) for v in attrs.padding],
                                  [int(v) for v in attrs.dilation])
        return call

    @staticmethod
    def _packable_conv(attrs) -> bool:
        return (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NHWC", "HWIO", "NHWC") \
            and int(attrs.groups) == 1 and str(attrs.out_dtype) in ("", "None", "float32", "void")

    @staticmethod
    def _winograd_fits(call, weight: np.ndarray) -> bool:
        """A 3x3 stride-1 convolution with enough input channels and enough output tiles (see winograd.fits)."""
        attrs, shape = call.attrs, call.ty.shape
        return weight.shape[:2] == (3, 3) and all(int(v) == 1 for v in (*attrs.strides, *attrs.dilation)) \
            and all(isinstance(shape[i], tvm.tirx.IntImm) for i in (1, 2)) \
            and winograd.fits(weight.shape[2], int(shape[1]), int(shape[2]))

    def _winograd(self, call, weight: np.ndarray, width: int):
        out_h, out_w = int(call.ty.shape[1]), int(call.ty.shape[2])
        padding = [int(v) for v in call.attrs.padding]
        v = self.builder_.emit(self._emit(winograd.input_transform, call.args[0], None, "winograd_input", padding))
        m = self.builder_.emit(self._emit(winograd.batched_gemm, v,
                                          pack_columns(winograd.transformed_weights(weight), width), "winograd_gemm"))
        return self._emit(winograd.output_transform, m, None, "winograd_output", out_h, out_w)

    def _emit(self, compute, x, packed: np.ndarray | None, name: str, *params):
        """call_te of COMPUTE on X (and the constant PACKED weights, when given) as an out-elementwise-fusable
        kernel: FuseOps folds the elementwise ops after it into it, and never fuses two such kernels."""
        weights = [] if packed is None else [relax.const(packed)]
        return self.builder_.call_te(compute, x, *weights, *params, primfunc_name_hint=name,
                                     primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})


@tvm.transform.module_pass(opt_level=0, name="kiln.PackWeights")
def pack_weights(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite matmul(x, W) and NHWC conv2d(x, W) with constant float32 weights into kernels that read the weights
    packed in panels of output columns (see the module docstring), and 3x3 stride-1 convolutions where it pays
    into Winograd ones (compiler/winograd.py) unless the module's WINOGRAD_ATTR is False. Grouped and depthwise
    convolutions keep theirs."""
    return rewrite_relax_functions(mod, _WeightPacker)
