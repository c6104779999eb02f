"""The CPU's low-precision dot-product instructions and the kernels that use them: int8 (x86 VNNI `vpdpbusd`:
uint8 activations x int8 weights, int32 sums) and bf16 (AVX512-BF16 `vdpbf16ps`: bf16 x bf16, float32 sums).

Each instruction adds, to each of 16 accumulator lanes, the sum of GROUP products (4 for int8, 2 for bf16). The
weights are packed at compile time so that one 64-byte load holds 16 output columns x GROUP reduction steps:
a matmul's [K, N] as [N / 16, K / GROUP, 16, GROUP], a convolution's HWIO as [O / 16, H, W, I / GROUP, 16, GROUP]
(K and I padded to a multiple of GROUP). The kernels are TE computes emitted into the Relax graph; Kiln's
DotProductContraction schedule tensorizes their reduction with the instruction (see schedules/dot_product.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx, topi
from tvm.script import tirx as T

from .packed import padded_window

LANES = 16  # accumulators per instruction: one 512-bit register of int32 / float32


@dataclass(frozen=True)
class DotProduct:
    """One dot-product instruction: LANES sums of GROUP products of DATA x WEIGHT elements, accumulated in ACC."""

    name: str
    data: str
    weight: str
    acc: str
    group: int
    llvm_intrinsic: str | None  # the vector instruction (None: AMX only)
    cpu_feature: str  # the /proc/cpuinfo flag (and targets/*.json cpu_features entry) that provides it
    amx_intrinsic: str | None = None  # the AMX tile instruction for the same product (schedules/amx.py)
    amx_feature: str | None = None


VNNI = DotProduct("vnni", "uint8", "int8", "int32", 4, "llvm.x86.avx512.vpdpbusd.512", "avx512_vnni",
                  "llvm.x86.tdpbusd", "amx_int8")
# bf16 is held as its bits in uint16: TVM 0.27's lowering turns bfloat16 arithmetic into float32 (and its LLVM
# code generator crashes on bfloat16 without that), so a bfloat16 operand can never reach an instruction. AMX
# takes memory addresses, not typed vectors, so the bits are all it needs. No vector (vdpbf16ps) path for the
# same reason.
BF16 = DotProduct("bf16", "uint16", "uint16", "float32", 2, None, "avx512_bf16", "llvm.x86.tdpbf16ps", "amx_bf16")
DOT_PRODUCTS = (VNNI, BF16)
# A 16-row, 64-byte AMX tile holds 16 groups of the reduction per row.
AMX_CHUNK_GROUPS = 16
AMX_MIN_TILE_ROWS = 7  # below this (a dense layer at batch 1) the vector instruction does better
# AMX tile registers: TILE_BYTES per row, up to MAX_TILE_ROWS rows; the first register of each kind the kernels
# use: 4 sum tiles, 2 of rows (activations), 2 of packed columns (weights)
TILE_BYTES = 64
MAX_TILE_ROWS = 16
C_TILES, A_TILES, B_TILES = 0, 4, 6


def amx_call(name: str, *args):
    """In TVMScript: the void LLVM intrinsic NAME (an AMX tile instruction) called with ARGS."""
    return T.evaluate(T.call_llvm_intrin("void", T.llvm_lookup_intrinsic_id(name), *args))


def tile_register(kind: int, index):
    """In TVMScript: the tile register INDEX after the first of KIND (C_TILES, A_TILES, B_TILES)."""
    return T.uint8(kind) + T.Cast("uint8", index)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_weight(weight: np.ndarray, group: int, depth: int | None = None) -> np.ndarray:
    """WEIGHT [..., K, N] (matmul [K, N]; HWIO convolution [H, W, I, O]) as [N / 16, ..., K / GROUP, 16, GROUP],
    K zero-padded to DEPTH (default: the next multiple of GROUP); N must be a multiple of 16."""
    *lead, depth_in, cols = weight.shape
    padded = np.zeros((*lead, depth or _round_up(depth_in, group), cols), weight.dtype)
    padded[..., :depth_in, :] = weight
    blocks = padded.reshape(*lead, padded.shape[-2] // group, group, cols // LANES, LANES)
    n = len(lead)
    # axes now: lead..., k/g (n), g (n+1), n/16 (n+2), 16 (n+3) -> n/16, lead..., k/g, 16, g
    order = [n + 2, *range(n), n, n + 3, n + 1]
    return np.ascontiguousarray(blocks.transpose(order))


def widen(value, dtype: str):
    """VALUE as DTYPE for the sum: a plain cast, except bf16 bits (uint16) to float32, which are the top half of
    the float32's bits."""
    own = str(value.dtype) if hasattr(value, "dtype") else str(value.ty)  # TE element / TIR buffer load
    if own == "uint16" and dtype == "float32":
        return tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("uint32", value), tirx.const(16, "uint32")))
    return value if own == dtype else tirx.Cast(dtype, value)


def bf16_round(value):
    """The float32 TIR expression VALUE as bf16 bits (uint16), rounded to nearest even."""
    bits = tirx.reinterpret("uint32", value)
    odd = tirx.bitwise_and(tirx.shift_right(bits, tirx.const(16, "uint32")), tirx.const(1, "uint32"))
    return tirx.shift_right(bits + tirx.const(0x7FFF, "uint32") + odd, tirx.const(16, "uint32")).astype("uint16")


def bf16_bits(x: te.Tensor) -> te.Tensor:
    """float32 X as bf16 bits (uint16), rounded to nearest even."""
    return te.compute(x.shape, lambda *index: bf16_round(x[index]), name="to_bf16")


def bf16_weight(weight: np.ndarray) -> np.ndarray:
    """float32 WEIGHT as bf16 bits (uint16), rounded to nearest even, as bf16_bits."""
    bits = np.ascontiguousarray(weight, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def dot_matmul(x: te.Tensor, packed: te.Tensor, acc: str) -> te.Tensor:
    """x[..., K] @ W with W packed by pack_weight; the result in ACC. X's K is padded with zeros to the packed
    depth (zero is the neutral value only for data whose zero point is 0: see quantize_input)."""
    panels, depth_groups, lanes, group = (int(d) for d in packed.shape)
    depth = int(x.shape[-1])
    if depth != depth_groups * group:
        x = topi.nn.pad(x, [0] * len(x.shape), [0] * (len(x.shape) - 1) + [depth_groups * group - depth],
                        name="pad_depth")
    k_outer = te.reduce_axis((0, depth_groups), "k_outer")
    k_inner = te.reduce_axis((0, group), "k_inner")

    def element(*index):
        col = index[-1]
        data = widen(x[(*index[:-1], k_outer * group + k_inner)], acc)
        return te.sum(data * widen(packed[col // lanes, k_outer, col % lanes, k_inner], acc),
                      axis=[k_outer, k_inner])

    return te.compute((*x.shape[:-1], panels * lanes), element, name="dot_matmul")


def dot_conv2d(x: te.Tensor, packed: te.Tensor, strides, padding, dilation, acc: str, pad_value=0) -> te.Tensor:
    """NHWC convolution of X with HWIO weights packed by pack_weight, into ACC; PADDING is (top, left, bottom,
    right), filled with PAD_VALUE (the zero point of quantized data), as are the channels added to reach the
    packed depth."""
    panels, kh_size, kw_size, depth_groups, lanes, group = (int(d) for d in packed.shape)
    x, out_h, out_w = padded_window(x, (kh_size, kw_size), strides, padding, dilation,
                                    depth_groups * group - int(x.shape[-1]), pad_value)
    (sh, sw), (dh, dw) = strides, dilation
    n = x.shape[0]
    kh, kw = te.reduce_axis((0, kh_size), "kh"), te.reduce_axis((0, kw_size), "kw")
    k_outer = te.reduce_axis((0, depth_groups), "k_outer")
    k_inner = te.reduce_axis((0, group), "k_inner")

    def element(b, h, w, co):
        pixel = widen(x[b, h * sh + kh * dh, w * sw + kw * dw, k_outer * group + k_inner], acc)
        weight = widen(packed[co // lanes, kh, kw, k_outer, co % lanes, k_inner], acc)
        return te.sum(pixel * weight, axis=[kh, kw, k_outer, k_inner])

    return te.compute((n, out_h, out_w, panels * lanes), element, name="dot_conv2d")


def depthwise_u8(q: te.Tensor, weight: te.Tensor, offset: te.Tensor, strides, padding, dilation,
                 zero_point: int) -> te.Tensor:
    """Depthwise NHWC convolution of uint8 Q (a quantized input: x = (q - zero point) x scale) with float32
    WEIGHT [kh, kw, C] that carry the input's scale; PADDING (top, left, bottom, right) is the zero point, and
    OFFSET[C] (zero point x the weights' sum over the window) removes it: the float32 convolution of x. The
    input is converted per tap: a depthwise convolution has too few terms per output for dot products."""
    kh_size, kw_size, _ = (int(d) for d in weight.shape)
    x, out_h, out_w = padded_window(q, (kh_size, kw_size), strides, padding, dilation, 0, zero_point)
    (sh, sw), (dh, dw) = strides, dilation
    kh, kw = te.reduce_axis((0, kh_size), "kh"), te.reduce_axis((0, kw_size), "kw")

    def element(b, h, w, c):
        pixel = x[b, h * sh + kh * dh, w * sw + kw * dw, c].astype("float32")
        return te.sum(pixel * weight[kh, kw, c], axis=[kh, kw])

    sums = te.compute((x.shape[0], out_h, out_w, q.shape[-1]), element, name="depthwise_u8")
    return te.compute(sums.shape, lambda *i: sums[i] - offset[i[-1]], name="dequantize")


def amx_rows(rows: int) -> int | None:
    """Rows per AMX tile for an output of ROWS rows: the largest divisor up to 16, if it is AMX_MIN_TILE_ROWS
    or more (3136 -> 16, 196 -> 14, 49 -> 7); None when AMX does not suit."""
    best = max(d for d in range(1, min(rows, 16) + 1) if rows % d == 0)
    return best if best >= AMX_MIN_TILE_ROWS else None


def amx_depth(depth: int, group: int) -> int:
    """DEPTH padded to whole AMX chunks (64 bytes of the reduction)."""
    return _round_up(depth, AMX_CHUNK_GROUPS * group)


def _unflatten(row, lead: list[int]) -> list:
    """The index into dims LEAD of flattened ROW."""
    index = []
    for extent in reversed(lead):
        index.insert(0, row % extent)
        row = row // extent
    return index


def rows_2d(x: te.Tensor, depth: int) -> te.Tensor:
    """X [..., K] as [rows, DEPTH] (rows = the product of the leading dims; K zero-padded to DEPTH)."""
    lead = [int(d) for d in x.shape[:-1]]
    width = int(x.shape[-1])

    def element(r, k):
        value = x[(*_unflatten(r, lead), tirx.min(k, width - 1))]
        return tirx.if_then_else(k < width, value, tirx.const(0, x.dtype))

    return te.compute((int(np.prod(lead)), depth), element, name="amx_rows")


def im2col(x: te.Tensor, kernel: tuple[int, int], strides, padding, dilation, depth: int,
           pad_value=0) -> tuple[te.Tensor, list[int]]:
    """(NHWC X as [N * OH * OW, DEPTH], [N, OH, OW]): each output pixel's KH x KW x C input window, flattened
    (c innermost, as HWIO weights reshaped to [KH * KW * C, O]) and zero-padded to DEPTH; outside the image it
    reads PAD_VALUE (the zero point)."""
    (kh_size, kw_size), (sh, sw), (dh, dw) = kernel, strides, dilation
    top, left, bottom, right = padding
    n, height, breadth, channels = (int(d) for d in x.shape)
    out_h = (height + top + bottom - (kh_size - 1) * dh - 1) // sh + 1
    out_w = (breadth + left + right - (kw_size - 1) * dw - 1) // sw + 1
    window = kh_size * kw_size * channels

    def element(r, k):
        b, h, w = _unflatten(r, [n, out_h, out_w])
        kh, kw, c = k // (kw_size * channels), k // channels % kw_size, k % channels
        y, z = h * sh + kh * dh - top, w * sw + kw * dw - left
        inside = tirx.all(y >= 0, y < height, z >= 0, z < breadth)
        value = x[b, tirx.max(tirx.min(y, height - 1), 0), tirx.max(tirx.min(z, breadth - 1), 0), c]
        return tirx.if_then_else(k < window, tirx.if_then_else(inside, value, tirx.const(pad_value, x.dtype)),
                                 tirx.const(0, x.dtype))

    return (te.compute((n * out_h * out_w, depth), element, name="im2col", attrs={"kiln.channels": channels}),
            [n, out_h, out_w])


def conv_geometry(attrs) -> tuple[list[int], list[int], list[int]]:
    """(strides, padding, dilation) of a Relax conv2d's ATTRS as ints."""
    return ([int(v) for v in attrs.strides], [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation])


def _reads_in_place(kind: str, attrs, weight_shape: tuple, group: int) -> bool:
    """True when an AMX kernel can read the activations as they are, a [rows, K] view: a matmul or a 1x1,
    stride-1, unpadded convolution whose K fills whole AMX chunks."""
    if int(np.prod(weight_shape[:-1])) % (AMX_CHUNK_GROUPS * group):
        return False
    if kind == "matmul":
        return True
    strides, padding, dilation = conv_geometry(attrs)
    return tuple(weight_shape[:2]) == (1, 1) and all(v == 1 for v in (*strides, *dilation)) and not any(padding)


def amx_layout(kind: str, attrs, weight_shape: tuple, lead: list[int], group: int) -> tuple[bool, bool]:
    """(whether AMX fits a site, whether it then reads the activations in place as a [rows, K] view). AMX fits
    when the output rows (the product of LEAD) split into tiles, the reduction fills at least one 64-byte chunk
    (MobileNetV2's 16-channel 1x1 convolutions padded to 64 ran 4x the work), and the activations are read in
    place, copied as a matmul's rows, or im2col'ed with whole vectors of channels (with few, as an RGB stem,
    im2col gathers bytes one at a time: 2.9 ms on ResNet-50's stem against 0.35 ms on VNNI)."""
    in_place = _reads_in_place(kind, attrs, weight_shape, group)
    depth = int(np.prod(weight_shape[:-1]))
    suits = amx_rows(int(np.prod(lead))) is not None and depth >= AMX_CHUNK_GROUPS * group and (
        in_place or kind == "matmul" or weight_shape[-2] % LANES == 0)
    return suits, suits and in_place


def pack_for_amx(weight: np.ndarray, group: int) -> np.ndarray:
    """WEIGHT (matmul [K, N] or HWIO) as the [K', N] matrix AMX multiplies (HWIO -> [KH * KW * I, O]), packed by
    pack_weight with K padded to whole AMX chunks."""
    flat = weight.reshape(-1, weight.shape[-1])
    return pack_weight(flat, group, amx_depth(flat.shape[0], group))


def amx_sums(x: te.Tensor, packed: te.Tensor, kind: str, attrs, kernel: tuple, lead: list[int], acc: str,
             in_place: bool, pad_value=0) -> te.Tensor:
    """The AMX kernel of a site: X as rows (itself when IN_PLACE, already a view; a copy with K padded for a
    matmul; im2col for a convolution of KERNEL, its border reading PAD_VALUE) times PACKED (pack_for_amx), into
    ACC, shaped [*LEAD, N]."""
    group = int(packed.shape[-1])
    depth = int(packed.shape[-3]) * group
    if in_place:
        rows = x
    elif kind == "matmul":
        rows = rows_2d(x, depth)
    else:
        rows = im2col(x, kernel, *conv_geometry(attrs), depth, pad_value)[0]
    return amx_contract(rows, packed, lead, acc)


def amx_contract(rows: te.Tensor, packed: te.Tensor, lead: list[int], acc: str) -> te.Tensor:
    """ROWS [M, K] @ W (packed by pack_weight, K padded to whole AMX chunks) into ACC, shaped [*LEAD, N] with
    M = prod(LEAD): the kernel the AMX schedule tensorizes."""
    panels, depth_groups, lanes, group = (int(d) for d in packed.shape)
    k_outer = te.reduce_axis((0, depth_groups), "k_outer")
    k_inner = te.reduce_axis((0, group), "k_inner")

    def element(*index):
        *spatial, col = index
        row = 0
        for extent, i in zip(lead, spatial):
            row = row * extent + i
        data = widen(rows[row, k_outer * group + k_inner], acc)
        return te.sum(data * widen(packed[col // lanes, k_outer, col % lanes, k_inner], acc),
                      axis=[k_outer, k_inner])

    return te.compute((*lead, panels * lanes), element, name="amx_matmul")


def quantize_input(x: te.Tensor, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> te.Tensor:
    """float32 X -> uint8: clip(round(x / scale) + zero_point, QMIN, QMAX), rounding half to even (as ONNX
    QuantizeLinear). X is multiplied by the reciprocal of SCALE: the vector division cost MobileNetV2 int8 3%,
    and the two differ only where x / scale lies within a rounding error of a half."""
    reciprocal = tirx.const(float(np.float32(1.0 / scale)), "float32")
    low, high = (tirx.const(float(bound - zero_point), "float32") for bound in (qmin, qmax))
    shifter = tirx.const(ROUNDING_SHIFTER, "float32")
    shifter_bits = tirx.const(int(np.float32(ROUNDING_SHIFTER).view(np.int32)) - zero_point, "int32")

    def element(*index):
        clipped = tirx.max(tirx.min(x[index] * reciprocal, high), low)
        # round half to even in one float addition: the sum's low mantissa bits hold the rounded value, and
        # the integer subtraction adds the zero point (no vrndscaleps / vcvttps2dq, which compete with the
        # epilogue's arithmetic for one port)
        code = tirx.reinterpret("int32", clipped + shifter) - shifter_bits
        return code.astype("uint8")

    return te.compute(x.shape, element, name="quantize")


# 1.5 x 2^23: a float32 sum with it rounds to an integer (half to even), held in the low mantissa bits while
# |value| < 2^22 (a quantize clips to qmin - zero point .. qmax - zero point first)
ROUNDING_SHIFTER = 12582912.0


def dequantize_sums(sums: te.Tensor, correction: te.Tensor, scale: te.Tensor) -> te.Tensor:
    """int32 SUMS -> float32 (sums - correction[col]) * scale[col]: CORRECTION removes the activations' zero
    point (zero_point x column sums of the weights), SCALE is activation scale x the column's weight scale."""
    return te.compute(sums.shape, lambda *i: (sums[i] - correction[i[-1]]).astype("float32") * scale[i[-1]],
                      name="dequantize")
