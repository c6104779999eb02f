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
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import winograd
from ..kernels.packed import CONV_PANELS, MATMUL_PANELS, pack_columns, packed_conv2d, packed_matmul, panel_width
from .relax_util import OUT_ELEMWISE_FUSABLE, const_value, op_name, rewrite_relax_functions

WINOGRAD_ATTR = "kiln.winograd"  # module attribute: False keeps every convolution direct (kiln compile --no-winograd)


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
            variant = width and self.winograd and self._winograd_variant(call, weight)
            if variant:
                return self._winograd(call, weight, width, variant)
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
    def _winograd_variant(call, weight: np.ndarray) -> winograd.Variant | None:
        """For a 3x3 stride-1 convolution with enough input channels and output tiles, the Winograd variant that
        pays (see winograd.choose); else None."""
        attrs, shape = call.attrs, call.ty.shape
        if weight.shape[:2] != (3, 3) or any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation)) \
                or not all(isinstance(shape[i], tvm.tirx.IntImm) for i in (1, 2)):
            return None
        return winograd.choose(weight.shape[2], int(shape[1]), int(shape[2]))

    def _winograd(self, call, weight: np.ndarray, width: int, variant: winograd.Variant):
        out_h, out_w = int(call.ty.shape[1]), int(call.ty.shape[2])
        padding = [int(v) for v in call.attrs.padding]
        v = self.builder_.emit(self._emit(winograd.input_transform, call.args[0], None, "winograd_input", padding,
                                          variant.tile))
        m = self.builder_.emit(self._emit(winograd.batched_gemm, v,
                                          pack_columns(winograd.transformed_weights(weight, variant), width),
                                          "winograd_gemm"))
        return self._emit(winograd.output_transform, m, None, "winograd_output", out_h, out_w, variant.tile)

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
    into Winograd ones (compiler/kernels/winograd.py) unless the module's WINOGRAD_ATTR is False. Grouped and depthwise
    convolutions keep theirs."""
    return rewrite_relax_functions(mod, _WeightPacker)
