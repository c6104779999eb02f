"""Ops TVM cannot take as they are: function bodies, the second try, unrolled Loop / Scan, inputs fixed with
--input-value. Each compiled and checked against ONNX Runtime."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from compiler.frontend import load_model, parse_input_values
from runtime.errors import KilnError
from tests.models import F32, assert_matches_onnxruntime, compile_and_check, finish, save, single_op_model

I64 = TensorProto.INT64


def _ops(path) -> set[str]:
    return {n.op_type for n in load_model(path).proto.graph.node}


def test_function_ops_expand_into_their_bodies(tmp_path):
    # Celu has no converter in TVM's importer, SoftmaxCrossEntropyLoss's body uses NegativeLogLikelihoodLoss,
    # which has none either: both are expanded (the second one level deeper)
    celu = single_op_model("Celu", {"x": [3, 7]}, alpha=0.7)
    assert "Celu" not in _ops(save(celu, tmp_path, "celu"))
    (tmp_path / "celu").mkdir()
    compile_and_check(celu, tmp_path / "celu")
    nodes = [helper.make_node("SoftmaxCrossEntropyLoss", ["scores", "labels"], ["loss"], reduction="mean")]
    graph = helper.make_graph(nodes, "sce", [helper.make_tensor_value_info("scores", F32, [4, 5])],
                              [helper.make_tensor_value_info("loss", F32, [])],
                              [numpy_helper.from_array(np.array([0, 3, 1, 4], np.int64), "labels")])
    sce = finish(graph)
    assert not _ops(save(sce, tmp_path, "sce")) & {"SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"}
    (tmp_path / "sce").mkdir()
    compile_and_check(sce, tmp_path / "sce")


def test_attention_23_is_its_function_body(tmp_path):
    # TVM's converter named Attention is com.microsoft's (it asks for num_heads): the opset-23 op is expanded
    q, k, v = ([1, 2, 5, 8], [1, 2, 6, 8], [1, 2, 6, 8])
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)
    graph = helper.make_graph([node], "attention", [helper.make_tensor_value_info(n, F32, s)
                                                    for n, s in zip("qkv", (q, k, v))],
                              [helper.make_tensor_value_info("y", F32, [1, 2, 5, 8])])
    model = finish(graph, opset=23)
    assert "Attention" not in _ops(save(model, tmp_path))
    compile_and_check(model, tmp_path)


def test_failing_converter_gets_a_second_try_with_the_function_body(tmp_path, caplog):
    # TVM's RMSNormalization converter builds a graph its passes reject when the scale spans several axes
    rng = np.random.default_rng(3)
    model = single_op_model("RMSNormalization", {"x": [3, 4]}, weights={"scale": rng.random((3, 4), np.float32)},
                            opset=23, axis=0)
    compile_and_check(model, tmp_path)
    assert "retrying with ONNX function bodies" in caplog.text


def _reduce_with_axes_input():
    nodes = [helper.make_node("ReduceSum", ["data", "axes"], ["y"], keepdims=1)]
    graph = helper.make_graph(nodes, "reduce", [helper.make_tensor_value_info("data", F32, [3, 4, 5]),
                                                helper.make_tensor_value_info("axes", I64, [2])],
                              [helper.make_tensor_value_info("y", F32, ["d0", "d1", "d2"])])
    return finish(graph, opset=18)


def test_inputs_that_decide_shapes_are_named_and_can_be_fixed(tmp_path):
    path = save(_reduce_with_axes_input(), tmp_path)
    with pytest.raises(KilnError, match=r"axes \(ReduceSum operand 1\).*--input-value axes="):
        compiler.compile(path, output=tmp_path / "refused.so", tuning_log="none")
    artifact = compiler.compile(path, output=tmp_path / "model.so", tuning_log="none",
                                input_values=parse_input_values(["axes=0,2"]))
    model = runtime.load(artifact.path)
    assert [s.name for s in model.inputs] == ["data"]
    assert model.manifest.bound_inputs == {"axes": {"dtype": "int64", "shape": [2], "value": [0, 2]}}
    data = np.random.default_rng(0).random((3, 4, 5), np.float32)
    # the fixed value may still be fed (it is checked and left out); ONNX Runtime gets it as an input
    assert_matches_onnxruntime(path, model, {"data": data, "axes": np.array([0, 2], np.int64)})
    np.testing.assert_allclose(model.run({"data": data})["y"], data.sum(axis=(0, 2), keepdims=True), rtol=1e-5)
    with pytest.raises(KilnError, match="was fixed to \\[0, 2\\]"):
        model.run({"data": data, "axes": np.array([1, 2], np.int64)})


def test_input_value_errors(tmp_path):
    path = save(_reduce_with_axes_input(), tmp_path)
    with pytest.raises(KilnError, match="write it as NAME=V,V"):
        parse_input_values(["axes=one"])
    with pytest.raises(KilnError, match="unknown input"):
        load_model(path, input_values={"nope": [1]})
    with pytest.raises(KilnError, match="do not fill its shape"):
        load_model(path, input_values={"axes": [1, 2, 3]})


def test_scan_is_unrolled(tmp_path):
    # a running sum and the sums at every step, over the rows of x (the onnx test's Scan body)
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "row"], ["sum_out"]),
         helper.make_node("Mul", ["sum_out", "row"], ["scan_out"])], "body",
        [helper.make_tensor_value_info("sum_in", F32, [4]), helper.make_tensor_value_info("row", F32, [4])],
        [helper.make_tensor_value_info("sum_out", F32, [4]), helper.make_tensor_value_info("scan_out", F32, [4])])
    node = helper.make_node("Scan", ["init", "x"], ["total", "steps"], body=body, num_scan_inputs=1,
                            scan_input_directions=[1], scan_output_axes=[1])
    graph = helper.make_graph([node], "scan", [helper.make_tensor_value_info("init", F32, [4]),
                                               helper.make_tensor_value_info("x", F32, [6, 4])],
                              [helper.make_tensor_value_info("total", F32, [4]),
                               helper.make_tensor_value_info("steps", F32, [4, 6])])
    model = finish(graph)
    assert "Scan" not in _ops(save(model, tmp_path))
    compile_and_check(model, tmp_path)


def test_loop_with_a_constant_trip_count_is_unrolled(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["i_float"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["state_in", "i_float"], ["scaled"]),
         helper.make_node("Add", ["scaled", "x"], ["state_out"]),
         helper.make_node("Identity", ["state_out"], ["each"])], "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", F32, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", F32, [3]), helper.make_tensor_value_info("each", F32, [3])])
    node = helper.make_node("Loop", ["trips", "cond", "x"], ["final", "all"], body=body)
    graph = helper.make_graph([node], "loop", [helper.make_tensor_value_info("x", F32, [3])],
                              [helper.make_tensor_value_info("final", F32, [3]),
                               helper.make_tensor_value_info("all", F32, [5, 3])],
                              [numpy_helper.from_array(np.array(5, np.int64), "trips"),
                               numpy_helper.from_array(np.array(True), "cond")])
    model = finish(graph)
    assert "Loop" not in _ops(save(model, tmp_path))
    compile_and_check(model, tmp_path)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization(tmp_path, p):
    compile_and_check(single_op_model("LpNormalization", {"x": [3, 5, 4]}, axis=1, p=p), tmp_path)


def test_kernel_over_an_empty_axis_builds(tmp_path):
    # a slice that keeps nothing feeds a concatenation: Kiln's injective rule trips over the zero-size axis
    # (TVM's fuse divides by it) and declines; the kernel runs as plain loops
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["empty"]),
             helper.make_node("Concat", ["x", "empty"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "empty", [helper.make_tensor_value_info("x", F32, [4, 8])],
                              [helper.make_tensor_value_info("y", F32, [4, 8])],
                              [numpy_helper.from_array(np.array([v], np.int64), n)
                               for n, v in (("starts", 3), ("ends", 3), ("axes", 1))])
    compile_and_check(finish(graph), tmp_path)


NARROW = [(TensorProto.FLOAT8E4M3FN, "float8_e4m3fn"), (TensorProto.FLOAT8E4M3FNUZ, "float8_e4m3fnuz"),
          (TensorProto.FLOAT8E5M2, "float8_e5m2"), (TensorProto.FLOAT8E5M2FNUZ, "float8_e5m2fnuz"),
          (TensorProto.FLOAT4E2M1, "float4_e2m1fn"), (TensorProto.INT4, "int4"), (TensorProto.UINT4, "uint4"),
          (TensorProto.INT2, "int2"), (TensorProto.UINT2, "uint2")]


@pytest.mark.parametrize("saturate", [1, 0])
def test_casts_to_and_from_narrow_types_match_ml_dtypes(tmp_path, saturate):
    """Every narrow type: a float32 sweep (ties, subnormals, overflow, inf, NaN, -0) cast to it and back, bit for
    bit what ml_dtypes gives (what numpy users and ONNX's reference get). All nine in one model: one compile."""
    import ml_dtypes  # noqa: PLC0415

    rng = np.random.default_rng(5)
    sweep = np.concatenate([np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e9, -1e9, 448, 464, 465, 57344, 61440,
                                      0.25, 0.75, 1.25, 2.5, -2.5, 3.5, 5.0, 6.5, 7.5, -8.5, 2 ** -9, 2 ** -10,
                                      2 ** -17, 2 ** -16 * 1.5], np.float32),
                            rng.standard_normal(200).astype(np.float32) * 40,
                            rng.standard_normal(100).astype(np.float32) * 1e-2]).astype(np.float32)
    nodes, outputs = [], []
    for elem, name in NARROW:
        attrs = {"saturate": saturate} if name.startswith("float8") else {}
        nodes += [helper.make_node("Cast", ["x"], [f"to_{name}"], to=elem, **attrs),
                  helper.make_node("Cast", [f"to_{name}"], [f"back_{name}"], to=TensorProto.FLOAT)]
        outputs += [helper.make_tensor_value_info(f"to_{name}", elem, [sweep.size]),
                    helper.make_tensor_value_info(f"back_{name}", F32, [sweep.size])]
    graph = helper.make_graph(nodes, "narrow", [helper.make_tensor_value_info("x", F32, [sweep.size])], outputs)
    path = save(finish(graph, opset=25), tmp_path)  # int2 / uint2 are opset 25's
    model = runtime.load(compiler.compile(path, output=tmp_path / "narrow.so", tuning_log="none").path)
    assert {s.name: s.dtype for s in model.outputs}[f"to_{NARROW[0][1]}"] == NARROW[0][1]
    got = model.run({"x": sweep})
    for elem, name in NARROW:
        dtype = getattr(ml_dtypes, name)
        with np.errstate(all="ignore"):
            clipped = np.clip(sweep, -float(ml_dtypes.finfo(dtype).max), float(ml_dtypes.finfo(dtype).max)) \
                if saturate and name.startswith("float8") else sweep
            want = clipped.astype(dtype)
        assert got[f"to_{name}"].dtype == dtype
        wrong = np.flatnonzero(got[f"to_{name}"].view(np.uint8) != want.view(np.uint8))
        assert not wrong.size, f"{name}: {sweep[wrong][:5]} -> {got[f'to_{name}'].view(np.uint8)[wrong][:5]}, " \
                               f"ml_dtypes {want.view(np.uint8)[wrong][:5]}"
        np.testing.assert_array_equal(got[f"back_{name}"], want.astype(np.float32))


def test_narrow_inputs_are_read_as_their_codes(tmp_path):
    import ml_dtypes  # noqa: PLC0415

    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
             helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT16)]
    graph = helper.make_graph(nodes, "narrow_in", [helper.make_tensor_value_info("x", TensorProto.FLOAT8E5M2, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 3])])
    path = save(finish(graph, opset=21), tmp_path)
    model = runtime.load(compiler.compile(path, output=tmp_path / "in.so", tuning_log="none").path)
    assert model.inputs[0].dtype == "float8_e5m2"
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5).astype(ml_dtypes.float8_e5m2)
    np.testing.assert_array_equal(model.run({"x": x})["y"], x.T.astype(np.float16))
    with pytest.raises(KilnError, match="dtype float32, expected float8_e5m2"):
        model.run({"x": x.astype(np.float32)})


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumulative_product(tmp_path, exclusive, reverse):
    model = single_op_model("CumProd", {"x": [3, 5]}, weights={"axis": np.array(1, np.int64)}, opset=26,
                            exclusive=exclusive, reverse=reverse)
    assert "CumProd" not in _ops(save(model, tmp_path))
    compile_and_check(model, tmp_path)


def test_shape_output_is_a_tensor(tmp_path):
    nodes = [helper.make_node("Shape", ["x"], ["shape"], start=1), helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "shape_out", [helper.make_tensor_value_info("x", F32, [2, 3, 4])],
                              [helper.make_tensor_value_info("shape", I64, [2]),
                               helper.make_tensor_value_info("y", F32, [2, 3, 4])])
    path = compile_and_check(finish(graph), tmp_path)
    assert runtime.load(path).run({"x": np.zeros((2, 3, 4), np.float32)})["shape"].tolist() == [3, 4]


@pytest.mark.parametrize("rows", [2, "n"])
def test_scalar_output_of_a_shape_is_a_tensor(tmp_path, rows):
    # a Squeeze of a Shape slice: TVM makes it a scalar value (a constant, or a run-time dim), not a tensor
    nodes = [helper.make_node("Shape", ["x"], ["dims"], start=0, end=1), helper.make_node("Squeeze", ["dims"], ["n"]),
             helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "scalar_out", [helper.make_tensor_value_info("x", F32, [rows, 3])],
                              [helper.make_tensor_value_info("n", I64, []),
                               helper.make_tensor_value_info("y", F32, [rows, 3])])
    path = compile_and_check(finish(graph), tmp_path)
    result = runtime.load(path).run({"x": np.zeros((2, 3), np.float32)})["n"]
    assert result.shape == () and result.dtype == np.int64 and int(result) == 2


def test_a_constant_shape_output_beside_a_linear_layer(tmp_path):
    # a window of the DistilBERT export (structured fuzzing): a Concat of constant dims returned beside a MatMul +
    # Add; the shape output's conversion read the layer's result from inside the dataflow block, where it was
    # undefined once the kernels were fused ("Var lv1 is not defined" in lowering)
    rng = np.random.default_rng(5)
    dims = [numpy_helper.from_array(np.array([v], np.int64), f"d{i}") for i, v in enumerate([1, 16, -1, 16])]
    nodes = [helper.make_node("Concat", ["d0", "d1", "d2", "d3"], ["dims"], axis=0),
             helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "const_shape_out", [helper.make_tensor_value_info("x", F32, [1, 16, 64])],
                              [helper.make_tensor_value_info("dims", I64, [4]),
                               helper.make_tensor_value_info("y", F32, [1, 16, 64])],
                              dims + [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
                                      numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")])
    path = compile_and_check(finish(graph), tmp_path)
    assert runtime.load(path).run({"x": np.zeros((1, 16, 64), np.float32)})["dims"].tolist() == [1, 16, -1, 16]


@pytest.mark.parametrize("with_beta_bias", [True, False])
def test_skip_layer_normalization_from_onnxruntime(tmp_path, with_beta_bias):
    # com.microsoft SkipLayerNormalization, as ONNX Runtime's transformer optimizer writes it, all four outputs
    rng = np.random.default_rng(2)
    weights = {"gamma": rng.random(8, np.float32) + 0.5}
    if with_beta_bias:
        weights.update(beta=rng.random(8, np.float32), bias=rng.random(8, np.float32))
    names = ["x", "skip", "gamma"] + (["beta", "bias"] if with_beta_bias else [])
    node = helper.make_node("SkipLayerNormalization", names, ["y", "mean", "inv_std", "sum"], domain="com.microsoft",
                            epsilon=1e-5)
    graph = helper.make_graph([node], "skip_ln", [helper.make_tensor_value_info(n, F32, [2, 3, 8]) for n in names[:2]],
                              [helper.make_tensor_value_info("y", F32, [2, 3, 8]),
                               helper.make_tensor_value_info("mean", F32, [2, 3, 1]),
                               helper.make_tensor_value_info("inv_std", F32, [2, 3, 1]),
                               helper.make_tensor_value_info("sum", F32, [2, 3, 8])],
                              [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    compile_and_check(model, tmp_path)


def test_skip_layer_normalization_refuses_a_skip_larger_than_its_input(tmp_path):
    # ONNX Runtime reads the first rows of such a skip; the op's contract is a skip that broadcasts to the input
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "skip_ln", [helper.make_tensor_value_info("x", F32, [1, 3, 8]),
                                                  helper.make_tensor_value_info("skip", F32, [4, 3, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, 3, 8])],
                              [numpy_helper.from_array(np.ones(8, np.float32), "gamma")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    with pytest.raises(KilnError, match=r"skip of shape \[4, 3, 8\] does not broadcast to the input's shape "
                                        r"\[1, 3, 8\]"):
        compiler.compile(save(model, tmp_path), target="auto", output=tmp_path / "m.so")
