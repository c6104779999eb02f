"""Dims that stay symbolic (a text model's batch and sequence length) through the shape arithmetic exporters
write: shape operands rebuilt from the inputs' dims, run-time dims resolved after import, Kiln's Range / Resize
converters, Tile over size-1 axes, partly known Shapes folded. Each model is compiled once with its dims
symbolic and checked against ONNX Runtime at two shapes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from tvm.relax.frontend.onnx import from_onnx

import compiler
import runtime
from compiler.frontend import import_relax, load_model
from compiler.frontend.shape_values import resolved_vars
from tests.models import F32, assert_matches_onnxruntime, finish, save

I64 = TensorProto.INT64


def _const(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.array(value, dtype), name)


def _check_at(path, folder, shapes: list[dict[str, list[int]]]):
    artifact = compiler.compile(path, output=folder / "m.so")
    model = runtime.load(artifact.path)
    rng = np.random.default_rng(0)
    for shape in shapes:
        assert_matches_onnxruntime(path, model, {n: rng.standard_normal(s).astype(np.float32)
                                                 for n, s in shape.items()})
    return artifact


def _heads_model():
    """y = reshape(x, [Shape(x)[0], Shape(x)[1], 2, 4]) + position(Range(0, Shape(x)[1])), torch style: every
    shape computed at run time from a [batch, sequence, 8] input."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Gather", ["shape", "one"], ["sequence"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
             helper.make_node("Unsqueeze", ["sequence", "axes"], ["sequence1"]),
             helper.make_node("Concat", ["batch1", "sequence1", "heads"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["split"]),
             helper.make_node("Range", ["zero", "sequence", "one"], ["positions"]),
             helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["positions_f", "tail"], ["positions3"]),
             helper.make_node("Add", ["split", "positions3"], ["y"])]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", F32, ["batch", "sequence", 8])],
                              [helper.make_tensor_value_info("y", F32, ["batch", "sequence", 2, 4])],
                              [_const("zero", 0), _const("one", 1), _const("axes", [0]), _const("heads", [2, 4]),
                               _const("tail", [1, 2])])
    return finish(graph, 18)


def test_run_time_shapes_of_symbolic_dims_import_as_the_inputs_dims(tmp_path):
    path = save(_heads_model(), tmp_path)
    loaded = load_model(path)
    reshape = next(n for n in loaded.proto.graph.node if n.op_type == "Reshape")
    target = next(t for t in loaded.proto.graph.initializer if t.name == reshape.input[1])
    assert numpy_helper.to_array(target).tolist() == [0, 0, 2, 4]  # rebuilt as a constant: copy batch, sequence
    script = import_relax(loaded).script()
    assert "range_len" not in script and "R.Tensor((batch, sequence, 2, 4)" in script  # Kiln's Range converter
    _check_at(path, tmp_path, [{"x": [1, 5, 8]}, {"x": [3, 11, 8]}])


def test_a_dim_computed_into_a_tensor_resolves_into_the_dim_it_is(tmp_path):
    # Range's limit through a 1-D Gather and arithmetic on the tensor it gives: TVM's importer computes the
    # length into a tensor and reads it back as a fresh var; shape_values.py proves it is `sequence`
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one1"], ["sequence1"], axis=0),
             helper.make_node("Mul", ["sequence1", "one1"], ["sequence1b"]),
             helper.make_node("Squeeze", ["sequence1b", "zero1"], ["sequence"]),
             helper.make_node("Range", ["zero", "sequence", "one"], ["positions"]),
             helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["positions_f", "tail"], ["positions2"]),
             helper.make_node("Add", ["x", "positions2"], ["y"])]
    graph = helper.make_graph(nodes, "positions", [helper.make_tensor_value_info("x", F32, ["batch", "sequence", 4])],
                              [helper.make_tensor_value_info("y", F32, ["batch", "sequence", 4])],
                              [_const("zero", 0), _const("one", 1), _const("one1", [1]), _const("zero1", [0]),
                               _const("tail", [1])])
    path = save(finish(graph, 18), tmp_path)
    loaded = load_model(path)
    resolved, _ = resolved_vars(from_onnx(loaded.proto)["main"])  # TVM's importer alone: one fresh var
    assert [str(v) for v in resolved.values()] == ["sequence"]
    assert "range_len" not in import_relax(loaded).script()
    _check_at(path, tmp_path, [{"x": [2, 3, 4]}, {"x": [1, 9, 4]}])


def test_tile_over_a_symbolic_batch_and_pads_from_static_dims(tmp_path):
    # A Tile whose repeats are [batch, 1] on a size-1 axis (DETR's queries) and a Pad whose pads come from
    # the static dims of a tensor with a dynamic batch (Swin's window padding)
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Shape", ["x"], ["batch1"], start=0, end=1),
             helper.make_node("Concat", ["batch1", "ones2"], ["repeats"], axis=0),
             helper.make_node("Tile", ["queries", "repeats"], ["tiled"]),
             helper.make_node("Gather", ["shape", "two"], ["width"], axis=0),
             helper.make_node("Mod", ["width", "four"], ["rest"]),
             helper.make_node("Sub", ["four", "rest"], ["pad"]),
             helper.make_node("Unsqueeze", ["pad", "zero1"], ["pad1"]),
             helper.make_node("Concat", ["zeros5", "pad1"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("Concat", ["tiled", "padded"], ["y"], axis=1)]
    queries = numpy_helper.from_array(np.random.default_rng(1).standard_normal((1, 2, 8)).astype(np.float32),
                                      "queries")
    graph = helper.make_graph(nodes, "tile_pad", [helper.make_tensor_value_info("x", F32, ["batch", 3, 6])],
                              [helper.make_tensor_value_info("y", F32, ["batch", 5, 8])],
                              [queries, _const("zero1", [0]), _const("one1", [1]), _const("ones2", [1, 1]),
                               _const("two", 2), _const("four", 4), _const("zeros5", [0, 0, 0, 0, 0])])
    # torch's dynamo exporter writes every intermediate shape (ONNX's inference cannot follow a Tile's repeats)
    graph.value_info.append(helper.make_tensor_value_info("tiled", F32, ["batch", 2, 8]))
    path = save(finish(graph, 18), tmp_path)
    ops = [n.op_type for n in load_model(path).proto.graph.node]
    assert "Tile" not in ops and "Expand" in ops and "Mod" not in ops  # the pads folded: width 6 is static
    _check_at(path, tmp_path, [{"x": [1, 3, 6]}, {"x": [4, 3, 6]}])


def test_equal_of_a_shape_is_decided_at_run_time_where_a_dim_is_symbolic(tmp_path):
    # Where(Equal(Shape(x), [1, -1]), ones, shape), as exporters write for expand: TVM's converter compared the
    # dims structurally at import time (the symbolic n never equal to 1, the 3 never equal to a Python 3)
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Equal", ["shape", "probe"], ["same"]),
             helper.make_node("Where", ["same", "ones", "shape"], ["picked"]),
             helper.make_node("Equal", ["shape", "three"], ["is_three"])]
    graph = helper.make_graph(nodes, "shape_equal", [helper.make_tensor_value_info("x", F32, ["n", 3])],
                              [helper.make_tensor_value_info("same", TensorProto.BOOL, [2]),
                               helper.make_tensor_value_info("picked", I64, [2]),
                               helper.make_tensor_value_info("is_three", TensorProto.BOOL, [2])],
                              [_const("probe", [1, -1]), _const("ones", [7, 7]), _const("three", [3, 3])])
    path = save(finish(graph), tmp_path)
    model = runtime.load(compiler.compile(path, output=tmp_path / "m.so").path)
    for rows in (1, 2):
        ours = assert_matches_onnxruntime(path, model, {"x": np.zeros((rows, 3), np.float32)})
        assert ours["same"].tolist() == [rows == 1, False] and ours["is_three"].tolist() == [rows == 3, True]
