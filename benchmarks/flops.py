"""Floating-point operations per inference of an ONNX model, counted from its graph: the roofline's numerator.

Counts 2 x multiply-adds of the contractions (Conv, ConvTranspose, MatMul, Gemm), which dominate every model of
the benchmark set; elementwise work, normalizations and softmax are left out (under 1% here), and so are matmuls
of two tensors whose shapes ONNX shape inference cannot fix (a real export's attention, a few % of it).
"""

from __future__ import annotations

import math

import onnx
from onnx import shape_inference

_SMALL = 64  # initializer elements kept with their values during shape inference


def _static_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Every tensor's shape with the inputs fixed to INPUT_SHAPES (shape inference on a weightless copy)."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    graph = skeleton.graph
    for inp in graph.input:
        if inp.name in input_shapes:
            for dim, value in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name]):
                dim.Clear()
                dim.dim_value = value
    # Large weights go back in as typed inputs: inference sees their shapes without copying their data (340 MB
    # for BERT-base); small ones (the shapes Reshape reads) keep their values.
    large = [init for init in graph.initializer if math.prod(init.dims) > _SMALL]
    kept = [init for init in graph.initializer if math.prod(init.dims) <= _SMALL]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    for init in large:
        graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inits = {init.name: list(init.dims) for init in model.graph.initializer}
    inferred = shape_inference.infer_shapes(skeleton)
    shapes = dict(inits)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def model_flops(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> int:
    """FLOPs (2 x multiply-adds) of the contractions of MODEL for inputs of INPUT_SHAPES."""
    shapes = _static_shapes(model, input_shapes)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = shapes[node.input[1]]
            # Conv weights are (out, in/group, k...): each output element sums in/group x kernel terms.
            # ConvTranspose weights are (in, out/group, k...): each input element scatters to out/group x kernel.
            if node.op_type == "Conv":
                total += 2 * math.prod(out) * math.prod(weight[1:])
            else:
                total += 2 * math.prod(shapes[node.input[0]]) * math.prod(weight[1:])
        elif node.op_type == "MatMul":
            # the reduction from either operand; a MatMul of two computed tensors whose shapes inference could
            # not fix (attention after a Reshape to computed dims) is left out
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            depth = a[-1] if a else (b[-2] if b and len(b) >= 2 else None)
            if depth is not None:
                total += 2 * math.prod(out) * depth
        elif node.op_type == "Gemm":
            a = shapes[node.input[0]]
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            total += 2 * math.prod(out) * (a[0] if trans_a else a[1])
    return total
