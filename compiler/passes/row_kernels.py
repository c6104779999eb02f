"""kiln.RowKernels: a float32 softmax or layer norm over the last axis as Kiln's row kernels
(compiler/kernels/softmax.py, compiler/kernels/layer_norm.py).

Both are reductions over each row followed by a pass that writes it, which TVM lowers to several stages that
dlight schedules one row element per step with scalar reductions: Whisper-tiny's softmax over 6 x 1500 x 1500
scores ran at 22 ms a layer (ONNX Runtime under 3), its layer norms at 0.55 ms a call. The row kernels make their
passes over a row held in L1, in vectors, with no row width that falls off to scalar code.

In: the graph before FastMathTransform (which would make the softmax TVM's fast_softmax). Out: each float32
softmax, and each layer norm with scale and shift, over its last axis with static shape, a call_tir of a row
kernel; others (another axis, symbolic shapes, other types) stay TVM's. A kiln.PadRows pad that alone reads a
layer norm's output is written by the layer norm kernel (its zero rows after the rows it normalizes).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels.layer_norm import row_layer_norm
from ..kernels.softmax import row_softmax
from .relax_util import op_name, rewrite_relax_functions, single_use_vars, static_dims


def _row_dims(call) -> list[int] | None:
    """The static, non-empty float32 shape of CALL's first argument; None for anything else."""
    dims = static_dims(call.args[0].ty) if getattr(call.args[0].ty, "dtype", None) == "float32" else None
    return dims if dims and 0 not in dims else None


def _over_last_axis(axes, ndim: int) -> bool:
    return len(axes) == 1 and int(axes[0]) in (-1, ndim - 1)


def row_kernels(lanes: int) -> tvm.transform.Pass:
    """The pass (see the module docstring), for a target whose float32 vectors have LANES lanes."""

    @mutator
    class _RowRewriter(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}  # one kernel per op, shape (epsilon, zero rows)
            self.single_use = single_use_vars(mod)

        def _padded_layer_norm(self, pad):
            """A layer norm kernel that writes PAD's zero rows too, where PAD (kiln.PadRows: zeros after the rows
            of a [1, rows, width] or [rows, width] tensor) alone reads a row layer norm's output; else None.
            ViT-B/16's 24 such pads took 0.55 ms a run on their own."""
            norm = self.lookup_binding(pad.args[0])
            widths = [int(w) for w in pad.attrs.pad_width]
            dims = static_dims(pad.args[0].ty)
            if op_name(norm) != "relax.call_tir" or dims is None \
                    or len(dims) < 2 or any(d != 1 for d in dims[:-2]) or str(pad.attrs.pad_mode) != "constant" \
                    or float(pad.attrs.pad_value) != 0.0 or any(widths[:-3] + widths[-2:]) or widths[-3] == 0:
                return None
            key = next((k for k, gv in self.kernels.items() if gv.same_as(norm.args[0])), None)
            if key is None or key[0] != "layer_norm":
                return None
            zero_rows, epsilon = widths[-3], key[-1]
            kernel = self._kernel((*key, zero_rows), lambda: row_layer_norm(dims, epsilon, lanes, zero_rows))
            return relax.call_tir(kernel, list(norm.args[1].fields), pad.ty)

        def _kernel(self, key: tuple, make) -> tvm.ir.GlobalVar:
            if key not in self.kernels:
                self.kernels[key] = self.builder_.add_func(make(), f"row_{key[0]}")
            return self.kernels[key]

        def visit_call_(self, call):
            single_use = op_name(call) == "relax.nn.pad" and call.args[0] in self.single_use
            call = self.visit_expr_post_order(call)
            name = op_name(call)
            fused = self._padded_layer_norm(call) if single_use else None
            if fused is not None:
                return fused
            dims = _row_dims(call) if name in ("relax.nn.softmax", "relax.nn.layer_norm") else None
            if dims is None:
                return call
            if name == "relax.nn.softmax":
                if not _over_last_axis([call.attrs.axis], len(dims)):
                    return call
                kernel = self._kernel(("softmax", *dims), lambda: row_softmax(dims, lanes))
                return relax.call_tir(kernel, [call.args[0]], call.ty)
            attrs = call.attrs
            if not (_over_last_axis(list(attrs.axes), len(dims)) and attrs.center and attrs.scale
                    and all(static_dims(a.ty) == dims[-1:] for a in call.args[1:])):
                return call
            epsilon = float(attrs.epsilon)
            kernel = self._kernel(("layer_norm", *dims, epsilon), lambda: row_layer_norm(dims, epsilon, lanes))
            return relax.call_tir(kernel, list(call.args), call.ty)

    @tvm.transform.module_pass(opt_level=0, name="kiln.RowKernels")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_relax_functions(mod, _RowRewriter)

    return _pass
