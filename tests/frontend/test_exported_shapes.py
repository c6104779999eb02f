"""What exporters write about shapes: run-time shape arithmetic (Shape -> Gather -> Concat -> Reshape), folded
where the shapes are fixed, and -1 / '?' / unnamed dims, which are dynamic."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import compiler
from compiler.describe import describe_model
from compiler.frontend import load_model
from tests.models import F32, assert_matches_onnxruntime, finish, save


def reshape_by_computed_shape(dims: list) -> helper.ModelProto:
    """y = reshape(x, [shape(x)[0], -1]) computed at run time, as torch's TorchScript exporter writes a flatten."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Relu", ["flat"], ["y"])]
    consts = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array([0], np.int64), "axes"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(nodes, "computed_reshape", [helper.make_tensor_value_info("x", F32, dims)],
                              [helper.make_tensor_value_info("y", F32, [dims[0], 20])], consts)
    return finish(graph, 13)


def test_shape_arithmetic_is_folded_where_the_shapes_are_fixed(tmp_path):
    path = save(reshape_by_computed_shape(["batch", 4, 5]), tmp_path)
    fixed = load_model(path, {"x": [2, 4, 5]})
    assert [n.op_type for n in fixed.proto.graph.node] == ["Reshape", "Relu"]
    target = next(t for t in fixed.proto.graph.initializer if t.name == "target")
    assert numpy_helper.to_array(target).tolist() == [2, -1]
    symbolic = load_model(path)
    assert [n.op_type for n in symbolic.proto.graph.node][0] == "Shape"  # the batch is not known: left to run time
    artifact = compiler.compile(path, output=tmp_path / "m.so", input_shapes={"x": [2, 4, 5]})
    assert_matches_onnxruntime(path, artifact.path)


def test_a_shape_value_that_is_also_a_graph_output_still_folds_into_the_reshape(tmp_path):
    # a window of the ViT export (structured fuzzing): the batch dim sliced out of the shape is returned and also
    # read by the Reshape's target; the Slice stays (it makes an output), the target folds all the same
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
             helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    consts = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("one", 1),
                                                                              ("minus_one", -1))]
    graph = helper.make_graph(nodes, "shape_output", [helper.make_tensor_value_info("x", F32, [2, 4, 5])],
                              [helper.make_tensor_value_info("batch", TensorProto.INT64, [1]),
                               helper.make_tensor_value_info("y", F32, [2, 20])], consts)
    path = save(finish(graph, 13), tmp_path)
    loaded = load_model(path).proto.graph
    assert [n.op_type for n in loaded.node] == ["Slice", "Reshape"]
    assert numpy_helper.to_array(next(t for t in loaded.initializer if t.name == "target")).tolist() == [2, -1]
    out = assert_matches_onnxruntime(path, compiler.compile(path, output=tmp_path / "m.so").path)
    assert out["batch"].tolist() == [2]


def test_paddle_style_dims_are_dynamic_and_can_be_set(tmp_path):
    path = save(finish(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "paddle_dims",
        [helper.make_tensor_value_info("x", F32, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("y", F32, [-1, 3, "?", "?"])]), 11), tmp_path)
    loaded = load_model(path)
    assert loaded.inputs[0].shape == ["x_dim0", 3, "x_dim2", "x_dim3"]  # each '?' its own dim, not one shared
    report = describe_model(path)
    assert report["suggested_input_shape"] == ["x=1x3x224x224"]
    assert any("224x224" in why for why in report["suggestion_basis"])
    artifact = compiler.compile(path, output=tmp_path / "m.so", input_shapes={"x": [1, 3, 8, 12]})
    assert artifact.manifest.inputs[0].shape == [1, 3, 8, 12]
    assert_matches_onnxruntime(path, artifact.path)


def test_token_inputs_get_a_sequence_length_suggested(tmp_path):
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "embedding",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("y", F32, None)], [table])
    report = describe_model(save(finish(graph, 13), tmp_path))
    assert report["suggested_input_shape"] == ["ids=1x128"]
