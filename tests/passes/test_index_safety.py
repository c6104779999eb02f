"""Indices that leave their tensor (a client's token id past the vocabulary, a corrupt constant) and shape values
too long to lower: the compiled model neither reads outside a tensor nor dies compiling. In-range results are
checked against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from runtime.errors import KilnError
from tests.models import F32, assert_matches_onnxruntime, finish, save

I64 = TensorProto.INT64
FAR = [10**6, -10**6, 2**62, -2**63, 2**63 - 1]


def _gather_model(op: str, data_shape, indices_shape, **attrs):
    rng = np.random.default_rng(3)
    data = numpy_helper.from_array(rng.standard_normal(data_shape).astype(np.float32), "data")
    node = helper.make_node(op, ["data", "ids"], ["y"], **attrs)
    graph = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info("ids", I64, indices_shape)],
                              [helper.make_tensor_value_info("y", F32, None)], [data])
    return finish(graph)


@pytest.mark.parametrize("op,data_shape,indices_shape,attrs", [
    ("Gather", [50, 8], ["n"], {}),  # an embedding lookup, symbolic length
    ("Gather", [4, 50], [3], {"axis": 1}),
    ("GatherElements", [4, 50], [4, 3], {"axis": 1}),
    ("GatherND", [6, 50], [3, 2], {}),
])
def test_out_of_range_indices_stay_inside_the_tensor(tmp_path, op, data_shape, indices_shape, attrs):
    path = save(_gather_model(op, data_shape, indices_shape, **attrs), tmp_path)
    model = runtime.load(compiler.compile(path, output=tmp_path / "m.so").path)
    shape = [3 if d == "n" else d for d in indices_shape]
    rng = np.random.default_rng(0)
    axis_sizes = np.array(data_shape[:shape[-1]] if op == "GatherND" else [data_shape[attrs.get("axis", 0)]])
    valid = rng.integers(-axis_sizes, axis_sizes, size=shape)  # negatives count from the end, as ONNX says
    assert_matches_onnxruntime(path, model, {"ids": valid})
    if op == "Gather":  # a graph input that indexes an axis: the runtime refuses far ids in one line
        with pytest.raises(KilnError, match=r"input 'ids' holds 1000000 at \[0\], outside \[-50, 49\]"):
            model.run({"ids": np.full(shape, 10**6, np.int64)})
        model.inputs[0].valid_range = None  # the kernels' own bound, as for an index computed inside the model
    for far in FAR:  # these run (no read outside the data) and give values taken from the data
        out = model.run({"ids": np.full(shape, far, np.int64)})["y"]
        assert np.isin(out, numpy_helper.to_array(_gather_model(op, data_shape, indices_shape).graph.initializer[0])).all()


def test_a_constant_index_out_of_range_does_not_kill_the_compiler(tmp_path):
    # constant folding ran TVM's take on this index (from a fuzzed DETR window): a segfault, now bounded
    graph = helper.make_graph([helper.make_node("Gather", ["data", "ids"], ["y"])], "far_constant",
                              [helper.make_tensor_value_info("data", F32, [4, 2])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(np.array([0, -2**63, 2, 3], np.int64), "ids")])
    path = save(finish(graph), tmp_path)
    model = runtime.load(compiler.compile(path, output=tmp_path / "m.so").path)
    assert model.run({"data": np.ones((4, 2), np.float32)})["y"].shape == (4, 2)


def test_a_long_shape_value_compiles(tmp_path):
    # ConstantOfShape(8^6) concatenated to a shape (from a fuzzed Swin window): lowering a 262,150-entry shape
    # value overflowed the stack; it is a constant tensor now
    nodes = [helper.make_node("Shape", ["x"], ["dims"]), helper.make_node("Gather", ["dims", "first"], ["rows"]),
             helper.make_node("Pow", ["eight", "rows"], ["count"]),
             helper.make_node("ConstantOfShape", ["count"], ["zeros"],
                              value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Concat", ["dims", "zeros"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "long_shape", [helper.make_tensor_value_info("x", F32, [6, 3])],
                              [helper.make_tensor_value_info("y", I64, None)],
                              [numpy_helper.from_array(np.array(8, np.int64), "eight"),
                               numpy_helper.from_array(np.array([0], np.int64), "first")])
    path = save(finish(graph), tmp_path)
    out = assert_matches_onnxruntime(path, compiler.compile(path, output=tmp_path / "m.so").path,
                                     {"x": np.zeros((6, 3), np.float32)})
    assert out["y"].shape == (2 + 8**6,)
