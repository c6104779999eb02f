"""The ONNX frontend: awkward but valid models compile; bad ones fail with one clear message."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import compiler
from compiler.frontend import load_model, parse_shape_overrides
from runtime.errors import KilnError
from tests.models import F32, assert_matches_onnxruntime, compile_and_check, finish, save, single_op_model

R = np.random.default_rng(3)


def conv_model(opset: int = 17) -> onnx.ModelProto:
    return single_op_model("Conv", {"x": [1, 2, 6, 6]},
                           weights={"w": R.standard_normal((3, 2, 3, 3)).astype(np.float32)},
                           opset=opset, pads=[1, 1, 1, 1])


def test_initializers_listed_as_inputs(tmp_path):
    model = conv_model()
    model.graph.input.append(helper.make_tensor_value_info("w", F32, [3, 2, 3, 3]))
    path = compile_and_check(model, tmp_path)
    manifest = compiler.compile(save(model, tmp_path), output=path).manifest
    assert [i.name for i in manifest.inputs] == ["x"]


def test_weights_from_constant_and_constant_of_shape(tmp_path):
    weight = R.standard_normal((3, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([3], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["b"],
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "const_weights", [helper.make_tensor_value_info("x", F32, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", F32, [1, 3, 6, 6])])
    compile_and_check(finish(graph), tmp_path)


def test_external_data_model(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(conv_model(), str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    artifact = compiler.compile(path, output=tmp_path / "ext.so")
    assert_matches_onnxruntime(path, artifact.path)


def test_old_opset_is_converted(tmp_path):
    model = conv_model(opset=9)
    assert load_model(save(model, tmp_path)).opset >= 11
    compile_and_check(model, tmp_path)


def _error(path, **kw) -> str:
    with pytest.raises(KilnError) as info:
        compiler.compile(path, output=path.with_suffix(".so"), **kw)
    return str(info.value)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    assert "is not a valid ONNX file" in _error(path)


def test_truncated_file(tmp_path):
    full = save(conv_model(), tmp_path).read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    assert "is not a valid ONNX file" in _error(path)


def test_missing_file(tmp_path):
    assert "model file not found" in _error(tmp_path / "absent.onnx")


def test_missing_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(conv_model(), str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    message = _error(path)
    assert "external data file(s) missing" in message and "ext.data" in message


def test_checker_failure(tmp_path):
    model = single_op_model("Relu", {"x": [2, 3]})
    model.graph.node[0].input[0] = "nowhere"
    message = _error(save(model, tmp_path))
    assert "fails the ONNX checker" in message and "nowhere" in message


def test_unsupported_ops_are_all_listed(tmp_path):
    nodes = [helper.make_node("Multinomial", ["x"], ["a"], name="first_multinomial"),
             helper.make_node("Multinomial", ["x"], ["b"], name="second_multinomial"),
             helper.make_node("Relu", ["x"], ["c"], name="fine"),
             helper.make_node("Det", ["c"], ["y"], name="the_det")]
    graph = helper.make_graph(nodes, "bad_ops", [helper.make_tensor_value_info("x", F32, [3, 3])],
                              [helper.make_tensor_value_info("y", F32, []),
                               helper.make_tensor_value_info("a", onnx.TensorProto.INT32, [3, 1]),
                               helper.make_tensor_value_info("b", onnx.TensorProto.INT32, [3, 1])])
    message = _error(save(finish(graph), tmp_path))
    assert "2 unsupported operator type(s)" in message
    assert "Multinomial x2 (first: first_multinomial)" in message
    assert "Det x1 (first: the_det)" in message
    assert "Relu" not in message


def test_input_shape_errors(tmp_path):
    path = save(conv_model(), tmp_path)
    assert "unknown input(s) nope" in _error(path, input_shapes={"nope": [1]})
    assert "has 2 dims, the model's input has 4" in _error(path, input_shapes={"x": [1, 2]})
    with pytest.raises(KilnError, match="write it as NAME=DxDxD"):
        parse_shape_overrides(["x=1xtwo"])
    assert parse_shape_overrides(["data=1x3x224x224"]) == {"data": [1, 3, 224, 224]}


def test_unknown_target(tmp_path):
    message = _error(save(conv_model(), tmp_path), target="pentium")
    assert "unknown target 'pentium'" in message and "x86-avx2" in message and "host" in message


def test_cosh_and_sinh_are_rewritten_and_match_onnxruntime(tmp_path):
    x = helper.make_tensor_value_info("x", F32, [2, 32])
    graph = helper.make_graph([helper.make_node("Cosh", ["x"], ["c"]), helper.make_node("Sinh", ["c"], ["y"])],
                              "hyperbolic", [x], [helper.make_tensor_value_info("y", F32, [2, 32])])
    compile_and_check(finish(graph), tmp_path, {"x": np.linspace(-2, 2, 64, dtype=np.float32).reshape(2, 32)})
    ops = {n.op_type for n in load_model(tmp_path / "model.onnx").proto.graph.node}
    assert "Cosh" not in ops and "Sinh" not in ops and "Mean" in ops


@pytest.mark.parametrize("scale_shape,bias_shape,outputs", [([4], [1, 4], 1), ([1, 4], None, 1), ([3, 1], [4], 3)])
def test_layer_norm_whose_scale_and_bias_broadcast_matches_onnxruntime(tmp_path, scale_shape, bias_shape, outputs):
    # axis -2 normalizes [3, 4]; Scale and B only broadcast to it (a fuzzed window of DistilBERT, axis changed):
    # ONNX Runtime takes it, TVM's layer_norm wants [3, 4] exactly
    rng = np.random.default_rng(9)
    weights = [numpy_helper.from_array(rng.standard_normal(scale_shape).astype(np.float32), "scale")]
    inputs = ["x", "scale"]
    if bias_shape:
        weights.append(numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "bias"))
        inputs.append("bias")
    names = ["y", "mean", "inv_std"][:outputs]
    node = helper.make_node("LayerNormalization", inputs, names, axis=-2, epsilon=1e-3)
    shapes = {"y": [2, 3, 4], "mean": [2, 1, 1], "inv_std": [2, 1, 1]}
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", F32, [2, 3, 4])],
                              [helper.make_tensor_value_info(n, F32, shapes[n]) for n in names], weights)
    compile_and_check(finish(graph, 17), tmp_path, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


@pytest.mark.parametrize("opset", [17, 18])
def test_layer_norm_mean_and_inv_std_outputs_match_onnxruntime(tmp_path, opset):
    rng = np.random.default_rng(8)
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv_std"], axis=-2,
                            epsilon=1e-3)
    outputs = [helper.make_tensor_value_info("y", F32, [2, 3, 4]), helper.make_tensor_value_info("mean", F32, [2, 1, 1]),
               helper.make_tensor_value_info("inv_std", F32, [2, 1, 1])]
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", F32, [2, 3, 4])], outputs,
                              [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "scale"),
                               numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "bias")])
    compile_and_check(finish(graph, opset), tmp_path, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})
