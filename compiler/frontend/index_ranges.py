"""The values each integer model input may hold where it indexes a tensor: a token id must be inside the
vocabulary it is looked up in.

The compiled kernels clamp every index into its tensor (passes/bound_indices.py), so an id past the vocabulary
reads the last row instead of memory outside it; ONNX Runtime refuses such an input. The ranges found here go
into the artifact's input specs (TensorSpec.valid_range), and the runtime refuses a value outside them in one
line (a server: 400) before anything runs.

In: the prepared ModelProto (shapes inferred). Out: {input name: [lowest, highest]} for the inputs that reach,
through ops that keep their values (Cast, Reshape, Unsqueeze, ...), the indices of a Gather (or of ONNX Runtime's
EmbedLayerNormalization) along an axis of static size n: [-n, n - 1], as ONNX allows negative indices.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

# ops whose output holds exactly the values of their first input
_VALUE_KEEPING = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}
_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                  onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
                  onnx.TensorProto.UINT64}
# (domain, op) -> [(index input, indexed data input)]: EmbedLayerNormalization looks up word and segment ids
_LOOKUPS = {("", "Gather"): [(1, 0)], ("com.microsoft", "EmbedLayerNormalization"): [(0, 2), (1, 4)]}


def input_index_ranges(model: onnx.ModelProto) -> dict[str, list[int]]:
    """{integer input: [lowest, highest]} that the input's values must keep to (module docstring)."""
    graph = model.graph
    shapes = _static_shapes(graph)
    consumers = defaultdict(list)
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers[name].append((node, position))
    ranges = {}
    for value in graph.input:
        if value.type.tensor_type.elem_type not in _INTEGER_TYPES:
            continue
        found = _extents(value.name, consumers, shapes, set())
        if found:
            n = min(found)
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
            if np.iinfo(dtype).min < -n or np.iinfo(dtype).max > n - 1:  # else no value of the dtype is outside
                ranges[value.name] = [-n, n - 1]
    return ranges


def _extents(name: str, consumers, shapes, seen: set) -> list[int]:
    """Axis sizes that NAME's values index, following value-keeping ops."""
    extents = []
    for node, position in consumers.get(name, []):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        for index, data in _LOOKUPS.get((domain, node.op_type), []):
            if position == index and data < len(node.input):
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0) if node.op_type == "Gather" else 0
                dims = shapes.get(node.input[data])
                if dims and -len(dims) <= axis < len(dims) and isinstance(dims[axis], int) and dims[axis] > 0:
                    extents.append(dims[axis])
        if node.op_type in _VALUE_KEEPING and domain == "" and position == 0 and node.output[0] not in seen:
            seen.add(node.output[0])
            extents += _extents(node.output[0], consumers, shapes, seen)
    return extents


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list]:
    """Each tensor's dims (ints where known) from the initializers and the inferred value infos."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.HasField("shape"):
            shapes.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else None
                                           for d in value.type.tensor_type.shape.dim])
    return shapes
