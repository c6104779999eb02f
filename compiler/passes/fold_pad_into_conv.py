"""kiln.FoldPadIntoConv: a zero pad of the spatial axes followed by a convolution, as the convolution's own
padding.

torch's `ZeroPad2d` before a convolution (Hugging Face's EfficientNet pads each stride-2 depthwise convolution
that way, TensorFlow-style "same" padding) exports as Pad -> Conv. The pad was a kernel of its own that wrote the
whole activation again, and in Kiln's NHWC layout it sat between two transposes. The convolution reads its own
padding as zeros without a copy.

In: the imported graph, before layout conversion (Pad as Relax's nn.pad: compiler/frontend/converters.py). Out:
the same graph with such convolutions reading the unpadded tensor (the pad stays where something else reads it).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions, spatial_axes

CONVS = {f"relax.nn.conv{n}d": (getattr(relax.op.nn, f"conv{n}d"), n) for n in (1, 2, 3)}


def folded_padding(conv: relax.Call, pad: relax.Call) -> list[int] | None:
    """CONV's padding with the zero spatial pad PAD (the producer of CONV's data) added; None where PAD pads
    anything else (batch, channels, a non-zero value, another mode)."""
    _make, spatial = CONVS[op_name(conv)]
    if str(pad.attrs.pad_mode) != "constant" or float(pad.attrs.pad_value) != 0.0:
        return None
    widths = [int(w) for w in pad.attrs.pad_width]
    layout = str(conv.attrs.data_layout)
    axes = spatial_axes(layout)
    if len(axes) != spatial or len(widths) != 2 * len(layout) or min(widths) < 0:
        return None
    if any(widths[2 * i] or widths[2 * i + 1] for i in range(len(layout)) if i not in axes):
        return None
    padding = [int(p) for p in conv.attrs.padding]
    return [padding[i] + widths[2 * axis] for i, axis in enumerate(axes)] + \
        [padding[spatial + i] + widths[2 * axis + 1] for i, axis in enumerate(axes)]


@mutator
class _PadFolder(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) not in CONVS or not isinstance(call.args[0], relax.Var):
            return call
        pad = self.lookup_binding(call.args[0])
        if op_name(pad) != "relax.nn.pad" or (padding := folded_padding(call, pad)) is None:
            return call
        make, _spatial = CONVS[op_name(call)]
        attrs = call.attrs
        return make(pad.args[0], call.args[1], strides=[int(s) for s in attrs.strides], padding=padding,
                    dilation=[int(d) for d in attrs.dilation], groups=int(attrs.groups),
                    data_layout=str(attrs.data_layout), kernel_layout=str(attrs.kernel_layout),
                    out_layout=str(attrs.out_layout), out_dtype=attrs.out_dtype)


@tvm.transform.module_pass(opt_level=0, name="kiln.FoldPadIntoConv")
def fold_pad_into_conv(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Zero spatial pads before convolutions as the convolutions' padding (see the module docstring)."""
    return rewrite_relax_functions(mod, _PadFolder)
