"""kiln.FitPoolWindows: a pooling window larger than the padded input it slides over, cut to that input, and
ceil_mode dropped where it changes no output.

Exporters write such windows: torch's `AvgPool2d(1280, ceil_mode=True)` over a 7x7 map (Hugging Face's
EfficientNet pooler) is one 1280x1280 window per channel. TVM's pooling kernel visits every tap of the window and
tests each against the input's bounds: 1.6 M taps per channel, 2.9 s of a 3 s EfficientNet-B0 run. Where the
output along an axis is one value, the window cut to the padded input (and a stride of 1) gives the same value:
max over the same elements, and an average with the same divisor whether or not padding counts (the part of a
window past the padding never counts, in ONNX as in TVM). With ceil_mode TVM also pads every axis by its stride
minus one, materialized (1286 x 1286 x 1280 floats for that pooler): where the last window ends on the padded
input's edge along every axis, ceil and floor give the same windows, and ceil_mode goes.

In: the imported graph (any layout). Out: the same graph with such pool calls' windows, strides and ceil_mode set.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import op_name, rewrite_relax_functions, spatial_axes

POOLS = {f"relax.nn.{kind}_pool{n}d": (getattr(relax.op.nn, f"{kind}_pool{n}d"), n)
         for kind in ("avg", "max") for n in (1, 2, 3)}


def fitted_window(call: relax.Call) -> tuple[list[int], list[int], bool] | None:
    """(window, strides, ceil_mode) for the pool CALL: each window side that is longer than its padded input, along
    an axis of one output, cut to that input (stride 1), and ceil_mode off where floor gives the same outputs; None
    where nothing changes (or shapes are not static)."""
    _make, spatial = POOLS[op_name(call)]
    attrs = call.attrs
    shape, out = getattr(call.args[0].ty, "shape", None), getattr(call.ty, "shape", None)
    if shape is None or out is None or any(int(d) != 1 for d in attrs.dilation):
        return None
    axes = spatial_axes(str(attrs.layout))
    dims = [shape[a] for a in axes] + [out[a] for a in axes]
    if len(axes) != spatial or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    window, strides = [int(k) for k in attrs.pool_size], [int(s) for s in attrs.strides]
    padding = [int(p) for p in attrs.padding]
    fitted, steps, exact = list(window), list(strides), True
    for i, axis in enumerate(axes):
        padded = int(shape[axis]) + padding[i] + padding[spatial + i]
        if window[i] > padded and int(out[axis]) == 1:
            fitted[i], steps[i] = padded, 1
        exact = exact and (padded - fitted[i]) % steps[i] == 0
    ceil_mode = bool(attrs.ceil_mode) and not exact
    if fitted == window and ceil_mode == bool(attrs.ceil_mode):
        return None
    return fitted, steps, ceil_mode


@mutator
class _WindowFitter(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) not in POOLS or (fitted := fitted_window(call)) is None:
            return call
        make, _spatial = POOLS[op_name(call)]
        attrs = call.attrs
        window, strides, ceil_mode = fitted
        return make(call.args[0], pool_size=window, strides=strides, padding=[int(p) for p in attrs.padding],
                    dilation=[int(d) for d in attrs.dilation], ceil_mode=ceil_mode,
                    count_include_pad=bool(attrs.count_include_pad),
                    layout=str(attrs.layout), out_layout=str(attrs.out_layout))


@tvm.transform.module_pass(opt_level=0, name="kiln.FitPoolWindows")
def fit_pool_windows(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Pool windows larger than their padded input cut to it (see the module docstring)."""
    return rewrite_relax_functions(mod, _WindowFitter)
