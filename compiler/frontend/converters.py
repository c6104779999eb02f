"""Kiln's converters for the ONNX ops whose TVM converter loses what a symbolic shape needs.

TVM's Relax importer has no hook for a converter of one's own; `kiln_converters()` puts these in place of TVM's
for the time of one import (importer.import_relax) and puts TVM's back after.

- Range with integer start and delta and a limit that is a symbolic dim (a text model's sequence length, which
  the importer gives as a PrimExpr): TVM's converter computes the length into a tensor and reads it back as a
  fresh var, so nothing downstream is known to have the sequence's length (an Add of position embeddings to
  token embeddings loses its shape, and a later Slice of its Shape fails). This one builds `arange` on the
  PrimExprs themselves. Everything else goes to TVM's converter.
- Resize whose `sizes` keep a symbolic batch or channel dim (`[1, batch, 2, 2]`: DETR's mask interpolation):
  TVM's converter reads every entry as an integer although it uses only the spatial ones (it never resizes the
  batch or channel axes). Where the leading entries are the input's own dims, they are given to it as 0s.
- Equal of a shape value and a constant (or two shape values): TVM's converter answers at import time with a
  structural comparison, which calls a dim unequal to the number it is (an IntImm against a Python int: a
  `Where(Equal(shape, -1), ...)` picks the wrong branch) and a symbolic dim unequal to anything else, though it
  may equal it at run time. This one answers at import time only where both sides are numbers, the same
  expression, or a dim and a negative number (never equal), and compares at run time otherwise.
- Conv with auto_pad SAME_UPPER / SAME_LOWER over an input with static spatial dims: the explicit pads the ONNX spec
  computes, where TVM's converter pads the input with an opaque TIR kernel of its own. Layout conversion could
  not look into that kernel, so in an NHWC build every such convolution (44 of an exported EfficientNet-B0's,
  1x1 ones whose pad is empty included) got an NHWC -> NCHW transpose, the pad and a transpose back before it.
- Pad (opset 11 on) in constant mode of a float tensor: Relax's `nn.pad` op, where TVM's converter emits an opaque
  TIR kernel. Kiln's passes can then see it: kiln.FoldPadIntoConv moves a zero pad into the convolution after it
  (torch's ZeroPad2d before a stride-2 depthwise convolution in EfficientNet: each was a kernel of its own, with a
  transpose on either side, since layout conversion could not look into it).
"""

from __future__ import annotations

import contextlib

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from .spatial_rewrites import same_padding


def _scalar(value) -> int | tvm.ir.PrimExpr | None:
    """VALUE as a Python int (a one-element integer constant) or an integer PrimExpr; None otherwise."""
    if isinstance(value, tvm.ir.GenericConst):
        array = value.value.numpy()
        return int(array.reshape(-1)[0]) if array.size == 1 and array.dtype.kind in "iu" else None
    if tvm.ir.is_prim_expr(value) and "int" in _dtype(value):
        return value
    return None


def _dtype(expr: tvm.ir.PrimExpr) -> str:
    return str(getattr(expr, "dtype", None) or expr.ty)  # a tirx.Var answers None to dtype: its type says it


class SymbolicRange(onnx_frontend.Range):
    """Range over a symbolic limit as an arange of that PrimExpr (see the module docstring)."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        start, limit, delta = (_scalar(x) for x in inputs)
        if isinstance(start, int) and isinstance(delta, int) and delta > 0 and limit is not None \
                and not isinstance(limit, int):
            dtype = str(inputs[0].ty.dtype)
            limit = tirx.Cast("int64", limit) if _dtype(limit) != "int64" else limit
            if start == 0 and delta == 1:
                return relax.op.arange(0, limit, 1, dtype)
            count = tirx.max(tirx.floordiv(limit - start + delta - 1, delta), 0)
            positions = bb.normalize(relax.op.arange(0, count, 1, dtype))
            return relax.op.add(relax.op.multiply(positions, relax.const(delta, dtype)), relax.const(start, dtype))
        return super()._impl_v12(bb, inputs, attr, params)


class SpatialResize:
    """Resize with symbolic leading `sizes` entries as TVM's converter with those entries fixed (module docstring)."""

    @classmethod
    def get_converter(cls, opset: int):
        tvm_converter = onnx_frontend.Resize.get_converter(opset)

        def convert(bb, inputs, attr, params):
            sizes = inputs[3] if len(inputs) > 3 else None
            data = bb.normalize(inputs[0])  # the importer hands over unnormalized calls, whose types are unset
            data_shape = getattr(data.ty, "shape", None)
            if isinstance(sizes, relax.ShapeExpr) and isinstance(data_shape, relax.ShapeExpr) \
                    and len(sizes.values) == len(data_shape.values) > 2 \
                    and all(isinstance(v, tirx.IntImm) for v in sizes.values[2:]) \
                    and any(not isinstance(v, tirx.IntImm) for v in sizes.values[:2]):
                analyzer = tvm.sym.Analyzer()
                if all(analyzer.can_prove_equal(a, b) for a, b in zip(sizes.values[:2], data_shape.values[:2])):
                    spatial = [0, 0, *(int(v.value) for v in sizes.values[2:])]
                    inputs = [data, *inputs[1:3], relax.const(spatial, "int64"), *inputs[4:]]
            return tvm_converter(bb, inputs, attr, params)

        return convert


class ShapeEqual:
    """Equal with a shape value on either side, decided at import time only where it can be (module docstring)."""

    @classmethod
    def get_converter(cls, opset: int):
        tvm_converter = onnx_frontend.Equal.get_converter(opset)

        def convert(bb, inputs, attr, params):
            kinds = (tvm.ir.GenericConst, relax.ShapeExpr)
            if not any(isinstance(i, relax.ShapeExpr) for i in inputs) or \
                    not all(isinstance(i, kinds) for i in inputs):
                return tvm_converter(bb, inputs, attr, params)
            lhs, rhs = (_entries(i) for i in inputs)
            if lhs is not None and rhs is not None and len(lhs) == len(rhs):
                known = [_known_equal(a, b) for a, b in zip(lhs, rhs)]
                if all(k is not None for k in known):
                    return relax.const(known, "bool")
            tensors = [relax.op.shape_to_tensor(i) if isinstance(i, relax.ShapeExpr) else i for i in inputs]
            return relax.op.equal(*tensors)

        return convert


class SamePadConv(onnx_frontend.Conv):
    """Conv with auto_pad SAME_* as explicit pads where the input's spatial dims are static (module docstring)."""

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        mode = attr.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        data = bb.normalize(inputs[0])  # the importer hands over unnormalized calls, whose types are unset
        dims = getattr(getattr(data.ty, "shape", None), "values", None)
        kernel = attr.get("kernel_shape") or inputs[1].ty.shape.values[2:]  # as TVM's converter reads it
        if mode not in ("SAME_UPPER", "SAME_LOWER") or dims is None \
                or not all(isinstance(d, (int, tirx.IntImm)) for d in [*dims[2:], *kernel]):
            return super()._impl_v11(bb, inputs, attr, params)
        sizes, kernel = [int(d) for d in dims[2:]], [int(k) for k in kernel]
        strides = list(attr.get("strides", [1] * len(sizes)))
        dilations = list(attr.get("dilations", [1] * len(sizes)))
        # the ONNX spec's total: what an output of ceil(size / stride) needs beyond the input
        before, after = zip(*(same_padding(max(0, (-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size),
                                           mode == "SAME_UPPER")
                              for size, k, stride, dilation in zip(sizes, kernel, strides, dilations)))
        explicit = {k: v for k, v in attr.items() if k != "auto_pad"}
        return super()._impl_v11(bb, inputs, {**explicit, "pads": [*before, *after]}, params)


class ConstantPad(onnx_frontend.Pad):
    @classmethod
    def _lower_pad(cls, bb, inputs, attr, params, allowed_modes):
        data = inputs[0]
        if attr.get("mode", b"constant").decode() != "constant" or "float" not in str(getattr(data.ty, "dtype", "")):
            return super()._lower_pad(bb, inputs, attr, params, allowed_modes)
        before, after, value = cls._parse_pads_and_axes(inputs, params)
        if min(before + after) < 0:  # a crop: TVM's converter's kernel
            return super()._lower_pad(bb, inputs, attr, params, allowed_modes)
        widths = [int(w) for pair in zip(before, after) for w in pair]
        return bb.emit(relax.op.nn.pad(data, widths, "constant", float(value)))


def _entries(value) -> list | None:
    """The entries of a shape value or a 1-D integer constant (ints or PrimExprs); None for anything else."""
    if isinstance(value, relax.ShapeExpr):
        return [int(v) if isinstance(v, tirx.IntImm) else v for v in value.values]
    array = value.value.numpy()
    return [int(v) for v in array] if array.ndim == 1 and array.dtype.kind in "iu" else None


def _known_equal(a, b) -> bool | None:
    """Whether dims A and B are equal, where that is known before run time; else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, int) != isinstance(b, int) and min(v for v in (a, b) if isinstance(v, int)) < 0:
        return False  # a dim is never negative: the exporters' Equal(shape, -1)
    if not isinstance(a, int) and not isinstance(b, int) and tvm_ffi.structural_equal(a, b):
        return True
    return None


KILN_CONVERTERS = {"Range": SymbolicRange, "Resize": SpatialResize, "Equal": ShapeEqual, "Pad": ConstantPad,
                   "Conv": SamePadConv}


@contextlib.contextmanager
def kiln_converters():
    """TVM's ONNX importer with KILN_CONVERTERS in place of its own, for the time of the `with` block."""
    tvm_map = onnx_frontend._get_convert_map  # noqa: SLF001 - the importer reads its map through this function
    onnx_frontend._get_convert_map = lambda: {**tvm_map(), **KILN_CONVERTERS}  # noqa: SLF001
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = tvm_map  # noqa: SLF001
