"""kiln.PatchConvTranspose: a transposed convolution whose kernel equals its stride (no padding, no dilation, one
group) as a matmul and a depth-to-space shuffle.

Each input pixel of such a convolution writes its own kh x kw patch of the output, so the convolution is
[pixels, C] @ [C, O * kh * kw] followed by moving each row's kh x kw block into place: the 2x2 / stride-2
upsampling of U-Nets, FPNs and PP-OCR's DB head. TVM lowers every conv2d_transpose as a convolution over the
input dilated with zeros (three quarters of the multiplications by zero for 2x2 / 2) on a schedule of no rule's:
PP-OCRv4's detector spent 47.7 ms of its 78 in its two, which as matmuls stream their few MB in about a
millisecond. Other transposed convolutions (overlapping patches) stay TVM's.

In: the simplified graph before layout conversion (NCHW / IOHW conv2d_transpose as imported). Out: permute to
NHWC -> matmul with the weights as [C, O * kh * kw] -> reshape / permute / reshape to [N, O, H * kh, W * kw]; the
weights' reshape folds, and the matmul gets Kiln's matmul passes (flattened rows, packed weights).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions, static_dims


def _is_patch(call) -> bool:
    """True when CALL is a conv2d_transpose whose patches do not overlap (kernel == stride) and that needs
    nothing else (no padding, dilation, groups, output padding; NCHW / IOHW; static shapes)."""
    attrs = call.attrs
    weight = static_dims(call.args[1].ty)
    return (static_dims(call.args[0].ty) is not None and weight is not None
            and (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) == ("NCHW", "IOHW", "NCHW")
            and [int(s) for s in attrs.strides] == weight[2:] and all(int(p) == 0 for p in attrs.padding)
            and all(int(p) == 0 for p in attrs.output_padding) and all(int(d) == 1 for d in attrs.dilation)
            and int(attrs.groups) == 1)


@mutator
class _PatchRewriter(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.nn.conv2d_transpose" or not _is_patch(call):
            return call
        batch, channels, height, width = static_dims(call.args[0].ty)
        _c, outs, kh, kw = static_dims(call.args[1].ty)
        emit = self.builder_.emit
        pixels = emit(relax.op.permute_dims(call.args[0], [0, 2, 3, 1]))
        weight = emit(relax.op.reshape(call.args[1], [channels, outs * kh * kw]))
        out_dtype = call.attrs.out_dtype if str(call.attrs.out_dtype) else None
        patches = emit(relax.op.matmul(pixels, weight, out_dtype=out_dtype))
        blocks = emit(relax.op.reshape(patches, [batch, height, width, outs, kh, kw]))
        placed = emit(relax.op.permute_dims(blocks, [0, 3, 1, 4, 2, 5]))
        return relax.op.reshape(placed, [batch, outs, height * kh, width * kw])


@tvm.transform.module_pass(opt_level=0, name="kiln.PatchConvTranspose")
def patch_conv_transpose(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Non-overlapping transposed convolutions as matmul + depth-to-space (see the module docstring)."""
    return rewrite_relax_functions(mod, _PatchRewriter)
