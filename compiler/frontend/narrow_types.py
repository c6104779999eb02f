"""Tensors of the narrow ONNX types (float8 in its four forms, float4 e2m1, int4 / uint4 / int2 / uint2) as bytes.

TVM's code generator cannot cast to or from these types (it fails on vectorized float8 casts and on sub-byte
tensor copies), so Kiln carries them as uint8 codes, one element per byte: the bit pattern ml_dtypes (and so
numpy users) store them in. Graph inputs, outputs and weights of these types become uint8; a Cast from one is a
lookup of the value each of its 2^bits codes stands for, built with ml_dtypes at compile time (exact); a Cast to
one encodes with plain ops: float formats round to the nearest representable value (ties to the even code) by
counting the midpoints below |x|, then apply the sign, overflow (saturating, or to inf / NaN) and NaN codes;
integer formats truncate and keep the low bits, as ml_dtypes' astype does. Ops that only move data (Reshape,
Transpose, Concat, ...) run on the codes unchanged. A model that does arithmetic on such a tensor directly is
left as it is.

In: a ModelProto (types known to ONNX shape inference). Out: the rewritten model and {input or output name:
its narrow dtype's numpy name}, which the manifest records so the runtime views arrays of those dtypes as uint8.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .node_builder import NodeBuilder
from .opsets import default_opset

NARROW = {TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn, TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
          TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2, TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
          TensorProto.FLOAT4E2M1: ml_dtypes.float4_e2m1fn, TensorProto.INT4: ml_dtypes.int4,
          TensorProto.UINT4: ml_dtypes.uint4, TensorProto.INT2: ml_dtypes.int2, TensorProto.UINT2: ml_dtypes.uint2}
_SATURATING = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
               TensorProto.FLOAT8E5M2FNUZ}  # the formats Cast's `saturate` attribute applies to
_INTEGERS = {TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2}
# Ops that move elements without reading them as numbers: they run on the codes as they are.
DATA_MOVEMENT = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Gather",
                 "Expand", "Split", "Tile"}


def _bits(elem_type: int) -> int:
    return 4 if elem_type in (TensorProto.FLOAT4E2M1, TensorProto.INT4, TensorProto.UINT4) else \
        2 if elem_type in (TensorProto.INT2, TensorProto.UINT2) else 8


def codes_of(array: np.ndarray) -> np.ndarray:
    """ARRAY (of a narrow ml_dtypes type) as its uint8 codes."""
    return np.ascontiguousarray(array).view(np.uint8)


def value_table(elem_type: int, to: np.dtype) -> np.ndarray:
    """The value of each code of ELEM_TYPE, as dtype TO (what astype gives)."""
    codes = np.arange(1 << _bits(elem_type), dtype=np.uint8)
    with np.errstate(all="ignore"):
        return codes.view(NARROW[elem_type]).astype(to)


class _Encoder:
    """The constants of the float encoding of one format: midpoints between its non-negative finite values."""

    def __init__(self, elem_type: int):
        dtype, bits = NARROW[elem_type], _bits(elem_type)
        values = value_table(elem_type, np.float64)[: 1 << (bits - 1)]
        finite = np.isfinite(values)
        self.top = int(np.flatnonzero(finite)[-1])  # the code of the largest finite value
        positive = values[: self.top + 1]
        if np.any(np.diff(positive) <= 0):
            raise ValueError(f"{np.dtype(dtype).name}: codes are not in value order")
        mids = (positive[:-1] + positive[1:]) / 2
        overflow = positive[-1] + (positive[-1] - positive[-2]) / 2
        self.mids = np.append(mids, overflow).astype(np.float32)
        self.odd = (np.arange(len(self.mids)) % 2 == 1)  # a tie at midpoint i goes to the even one of i, i + 1
        self.max = float(positive[-1])
        self.sign = 1 << (bits - 1)
        with np.errstate(all="ignore"):
            self.nan_code = int(codes_of(np.array([np.nan], np.float32).astype(dtype))[0])
            self.overflow_code = int(codes_of(np.array([1e30], np.float32).astype(dtype))[0])
            negative_tiny = int(codes_of(np.array([-1e-30], np.float32).astype(dtype))[0])
        self.signed_zero = negative_tiny == self.sign  # fnuz formats have no -0: a tiny negative is 0


class _Rewriter(NodeBuilder):
    def __init__(self, model: onnx.ModelProto):
        super().__init__(prefix="kiln_narrow")
        self.model = model
        self.opset = default_opset(model)

    def last_axis_sum(self, x: str) -> str:
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.const(np.array([-1], np.int64))], keepdims=0)
        return self.op("ReduceSum", [x], axes=[-1], keepdims=0)

    def decode(self, codes: str, elem_type: int, to: int, out: str) -> None:
        """OUT (of ONNX type TO) = the values of the CODES of ELEM_TYPE."""
        table = self.const(value_table(elem_type, helper.tensor_dtype_to_np_dtype(to)))
        self.op("Gather", [table, self.op("Cast", [codes], to=TensorProto.INT32)], out, axis=0)

    def encode(self, x: str, from_type: int, elem_type: int, saturate: bool, out: str) -> None:
        """OUT (uint8 codes of ELEM_TYPE) = X (of ONNX type FROM_TYPE) cast as ml_dtypes' astype casts."""
        if from_type in NARROW:
            decoded = self.fresh("decoded")
            self.decode(x, from_type, TensorProto.FLOAT, decoded)
            x = decoded
        elif from_type != TensorProto.FLOAT:
            x = self.op("Cast", [x], to=TensorProto.FLOAT)
        nan = self.op("IsNaN", [x])
        if elem_type in _INTEGERS:  # truncate, keep the low bits; NaN and inf give 0
            finite = self.op("Where", [self.op("Or", [nan, self.op("IsInf", [x])]), self.const(np.float32(0)), x])
            whole = self.op("Cast", [finite], to=TensorProto.INT32)
            low = self.op("BitwiseAnd", [whole, self.const(np.int32((1 << _bits(elem_type)) - 1))])
            self.op("Cast", [low], out, to=TensorProto.UINT8)
            return
        enc = _Encoder(elem_type)
        if saturate and elem_type in _SATURATING:
            x = self.op("Clip", [x, self.const(np.float32(-enc.max)), self.const(np.float32(enc.max))])
        magnitude = self.op("Unsqueeze", [self.op("Abs", [x]), self.const(np.array([-1], np.int64))]) \
            if self.opset >= 13 else self.op("Unsqueeze", [self.op("Abs", [x])], axes=[-1])
        mids = self.const(enc.mids)
        above = self.op("Cast", [self.op("Greater", [magnitude, mids])], to=TensorProto.INT32)
        tie = self.op("And", [self.op("Equal", [magnitude, mids]), self.const(enc.odd)])
        index = self.op("Add", [self.last_axis_sum(above),
                                self.last_axis_sum(self.op("Cast", [tie], to=TensorProto.INT32))])
        overflowed = self.op("Greater", [index, self.const(np.int32(enc.top))])
        # past the largest value: the format's overflow code, whose sign (if it has one) follows x below
        code = self.op("Where", [overflowed, self.const(np.int32(enc.overflow_code & (enc.sign - 1))), index])
        zero = self.const(np.float32(0))
        negative = self.op("Less", [x, zero])
        if enc.signed_zero:  # -0 keeps its sign: 1 / -0 is -inf
            inverse = self.op("Reciprocal", [x])
            minus_zero = self.op("And", [self.op("Equal", [x, zero]), self.op("Less", [inverse, zero])])
            negative = self.op("Or", [negative, minus_zero])
        if enc.overflow_code & enc.sign or not enc.signed_zero:
            # fnuz: no -0, and the overflow code (NaN, 0x80) is the sign bit alone; float4: saturates unsigned
            keeps_sign = self.op("And", [self.op("Greater", [index, self.const(np.int32(0))]),
                                         self.op("Not", [overflowed])])
            negative = self.op("And", [negative, keeps_sign])
            code = self.op("Where", [overflowed, self.const(np.int32(enc.overflow_code)), code])
        signed = self.op("Add", [code, self.op("Mul", [self.op("Cast", [negative], to=TensorProto.INT32),
                                                       self.const(np.int32(enc.sign))])])
        with_nan = self.op("Where", [nan, self.const(np.int32(enc.nan_code)), signed])
        self.op("Cast", [with_nan], out, to=TensorProto.UINT8)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without types nothing here can be rewritten
        return {}
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _declares_narrow(graph: onnx.GraphProto) -> bool:
    """Whether any tensor of GRAPH can be of a narrow type: they come in as inputs, weights or Constants, or are
    made by a Cast to one (a CastLike takes its type from one of those)."""
    values = [v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]]
    values += [t.data_type for t in graph.initializer]
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Cast" and "to" in attrs:
            values.append(attrs["to"].i)
        elif node.op_type == "Constant" and "value" in attrs:
            values.append(attrs["value"].t.data_type)
    return any(v in NARROW for v in values)


def rewrite_narrow_types(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """MODEL with its narrow-typed tensors as uint8 codes (see the module docstring), and the narrow dtypes of
    its inputs and outputs by name; MODEL itself and {} when it has none or uses them in a way this cannot
    rewrite."""
    graph = model.graph
    if not _declares_narrow(graph):  # most models: no shape inference spent on them here
        return model, {}
    types = _types(model)
    narrow = {name for name, t in types.items() if t in NARROW}
    for node in graph.node:
        reads = set(node.input) & narrow
        if reads and node.op_type not in DATA_MOVEMENT | {"Cast", "CastLike"} or \
                node.op_type == "CastLike" and node.input[0] in narrow and node.input[1] not in types:
            return model, {}
        if any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute) and reads:
            return model, {}
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    r = _Rewriter(rewritten)
    boundary = {}
    for value in [*graph.input, *graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem in NARROW:
            boundary[value.name] = np.dtype(NARROW[elem]).name
            value.type.tensor_type.elem_type = TensorProto.UINT8
    for init in graph.initializer:
        if init.data_type in NARROW:
            init.CopyFrom(numpy_helper.from_array(codes_of(numpy_helper.to_array(init)), init.name))
    kept_info = [v for v in graph.value_info if v.type.tensor_type.elem_type not in NARROW]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs and attrs["value"].data_type in NARROW:
            r.nodes.append(helper.make_node("Constant", [], list(node.output),
                                            value=numpy_helper.from_array(codes_of(numpy_helper.to_array(
                                                attrs["value"])), node.output[0])))
            continue
        if node.op_type not in ("Cast", "CastLike"):
            r.nodes.append(node)
            continue
        source = types.get(node.input[0], TensorProto.FLOAT)
        target = attrs["to"] if node.op_type == "Cast" else types.get(node.input[1], TensorProto.FLOAT)
        saturate = bool(attrs.get("saturate", 1))
        if target in NARROW:
            r.encode(node.input[0], source, target, saturate, node.output[0])
        elif source in NARROW:
            r.decode(node.input[0], source, target, node.output[0])
        elif node.op_type == "CastLike":
            r.nodes.append(helper.make_node("Cast", [node.input[0]], list(node.output), to=target))
        else:
            r.nodes.append(node)
    del graph.node[:]
    graph.node.extend(r.nodes)
    return rewritten, boundary
