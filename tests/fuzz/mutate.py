"""Mutations of valid ONNX models for fuzzing `kiln compile`: bytes and protobuf fields (shapes, dtypes,
attributes, dangling edges, cycles, huge dims, unknown ops, opsets, initializers). Case N is reproducible: it is
the seed of its random generator."""

from __future__ import annotations

import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def seed_models() -> list[onnx.ModelProto]:
    """The valid models mutations start from: a small CNN, a transformer block, a Gemm with a bias."""
    from benchmarks.zoo import bert_encoder, resnet  # noqa: PLC0415

    gemm = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1), helper.make_node("Relu", ["y"], ["z"])],
        "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.ones((4, 8), np.float32), "w"),
         numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(gemm, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return [resnet((1,), width=4, size=8, classes=3), bert_encoder(layers=1, hidden=8, heads=2, ffn=16, seq=4),
            model]


def _dims(value_info) -> list:
    return list(value_info.type.tensor_type.shape.dim)


def _shape_dim(rng, graph):
    values = [v for v in list(graph.input) + list(graph.output) if v.type.HasField("tensor_type")]
    dims = [d for v in values for d in _dims(v)]
    if not dims:
        return
    dim = rng.choice(dims)
    choice = rng.choice(["zero", "negative", "huge", "symbolic", "one"])
    if choice == "symbolic":
        dim.dim_param = rng.choice(["N", "", "weird name", "x" * 300])
    else:
        dim.dim_value = {"zero": 0, "negative": -3, "huge": 2 ** 40, "one": 1}[choice]


def _dtype(rng, graph):
    values = [v for v in list(graph.input) + list(graph.output) if v.type.HasField("tensor_type")]
    if values:
        rng.choice(values).type.tensor_type.elem_type = rng.choice(
            [0, TensorProto.STRING, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.INT4, TensorProto.DOUBLE,
             TensorProto.COMPLEX64, TensorProto.INT8, 99])


def _attribute(rng, graph):
    attrs = [(n, a) for n in graph.node for a in n.attribute]
    if not attrs:
        return
    node, attr = rng.choice(attrs)
    choice = rng.choice(["delete", "value", "type"])
    if choice == "delete":
        node.attribute.remove(attr)
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice([-1, 0, 2 ** 31, -(2 ** 40), 7])
    elif attr.type == onnx.AttributeProto.INTS:
        attr.ints[:] = rng.choice([[], [0], [-5, -5], [2 ** 40], [1] * 9])
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = rng.choice([float("nan"), float("inf"), -1.0, 1e30])
    elif choice == "type":
        attr.type = onnx.AttributeProto.STRING
        attr.s = b"junk"


def _dangling(rng, graph):
    node = rng.choice(list(graph.node))
    if node.input:
        node.input[rng.randrange(len(node.input))] = "no_such_tensor"


def _cycle(rng, graph):
    nodes = list(graph.node)
    if len(nodes) >= 2 and nodes[0].input and nodes[-1].output:
        nodes[0].input[0] = nodes[-1].output[0]


def _duplicate_output(rng, graph):
    nodes = list(graph.node)
    if len(nodes) >= 2:
        nodes[-1].output[0] = nodes[0].output[0]


def _delete_node(rng, graph):
    graph.node.remove(rng.choice(list(graph.node)))


def _unknown_op(rng, graph):
    node = rng.choice(list(graph.node))
    choice = rng.choice(["op", "domain"])
    if choice == "op":
        node.op_type = rng.choice(["NoSuchOp", "", "conv", "Conv2D"])
    else:
        node.domain = rng.choice(["com.example", "ai.onnx.ml", "com.microsoft"])


def _initializer(rng, graph):
    if not graph.initializer:
        return
    tensor = rng.choice(list(graph.initializer))
    choice = rng.choice(["dims", "remove", "dtype", "truncate"])
    if choice == "dims":
        tensor.dims[:] = [d + rng.choice([1, -1, 1000]) for d in tensor.dims] or [5]
    elif choice == "remove":
        graph.initializer.remove(tensor)
    elif choice == "dtype":
        tensor.data_type = rng.choice([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.STRING, 0])
    elif tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: len(tensor.raw_data) // 2]


def _plausible_dim(rng, graph):
    """A graph input dim set to another plausible size: passes the checker, reaches shape inference and TVM."""
    dims = [d for v in graph.input if v.type.HasField("tensor_type") for d in _dims(v)]
    if dims:
        rng.choice(dims).dim_value = rng.choice([1, 2, 3, 5, 7, 16, 31, 64])


def _plausible_attribute(rng, graph):
    """A window attribute (strides, pads, dilations, kernel_shape, perm, axis) set to another plausible value."""
    attrs = [a for n in graph.node for a in n.attribute
             if a.name in ("strides", "pads", "dilations", "kernel_shape", "perm", "axis", "group")]
    if not attrs:
        return
    attr = rng.choice(attrs)
    if attr.type == onnx.AttributeProto.INTS:
        if attr.name == "perm":
            values = list(attr.ints)
            rng.shuffle(values)
            attr.ints[:] = values
        else:
            attr.ints[:] = [rng.choice([0, 1, 2, 3]) + (attr.name != "pads") for _ in attr.ints]
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice([-2, -1, 0, 1, 2])


def _opset(rng, model):
    model.opset_import[0].version = rng.choice([0, 1, 5, 99, 10 ** 6])


GRAPH_MUTATIONS = [_shape_dim, _dtype, _attribute, _dangling, _cycle, _duplicate_output, _delete_node, _unknown_op,
                   _initializer, _plausible_dim, _plausible_dim, _plausible_attribute, _plausible_attribute]


def mutate(seed: int, seeds: list[onnx.ModelProto]) -> bytes:
    """The serialized model of fuzz case SEED: one to three protobuf mutations of a seed model, or (one case in
    five) damaged bytes."""
    rng = random.Random(seed)
    model = onnx.ModelProto()
    model.CopyFrom(rng.choice(seeds))
    if rng.random() < 0.2:
        data = bytearray(model.SerializeToString())
        for _ in range(rng.randint(1, 8)):
            choice = rng.choice(["flip", "truncate", "insert"])
            if choice == "flip" and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif choice == "truncate" and data:
                del data[rng.randrange(len(data)):]
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return bytes(data)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.1:
            _opset(rng, model)
        else:
            rng.choice(GRAPH_MUTATIONS)(rng, model.graph)
    return model.SerializeToString()
