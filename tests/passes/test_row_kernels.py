"""kiln.RowKernels and its kernels (compiler/kernels/softmax.py, layer_norm.py): softmax and layer norm over the
last axis as vector passes over each row, right for every row width (whole vectors, the overlapping last vector,
rows narrower than a vector), and the compiled model as ONNX Runtime's; other axes stay TVM's."""

import numpy as np
import pytest
import tvm
from onnx import helper, numpy_helper

from compiler import frontend
from compiler.kernels.layer_norm import row_layer_norm
from compiler.kernels.softmax import row_softmax
from compiler.pipeline import fuse_kernels, simplify_graph
from compiler.targets import get_target
from tests.models import F32, compile_and_check, finish, save


def softmax_model(shape: list[int], axis: int = -1):
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], "softmax",
                              [helper.make_tensor_value_info("x", F32, shape)],
                              [helper.make_tensor_value_info("y", F32, shape)])
    return finish(graph)


def kernels(model, tmp_path) -> str:
    preset = get_target("x86-avx512")
    loaded = frontend.load_model(save(model, tmp_path), None)
    return fuse_kernels(simplify_graph(loaded, preset), preset).script()


def exact_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_last_axis_softmax_is_the_row_kernel(tmp_path):
    script = kernels(softmax_model([1, 2, 5, 197]), tmp_path)
    assert "row_softmax" in script and "T_softmax_maxelem" not in script


def test_softmax_over_another_axis_stays_tvms(tmp_path):
    script = kernels(softmax_model([1, 6, 5, 7], axis=1), tmp_path)
    assert "row_softmax" not in script and "softmax" in script


@pytest.mark.parametrize("lanes", [16, 8, 4])
def test_kernel_is_right_for_every_row_width(lanes):
    """Widths 1..2*LANES+3 cover rows narrower than a vector, whole vectors, and every length of the overlapping
    last vector; the values span +-40, so a wrong max or a lane counted twice shows."""
    rng = np.random.default_rng(lanes)
    target = get_target("x86-avx512").tvm()
    for width in range(1, 2 * lanes + 4):
        x = (rng.standard_normal((3, width)) * 40).astype(np.float32)
        lib = tvm.compile(tvm.IRModule({"main": row_softmax([3, width], lanes).with_attr("global_symbol", "main")}),
                          target=target)
        y = tvm.runtime.empty((3, width), "float32")
        lib["main"](tvm.runtime.tensor(x), y)
        np.testing.assert_allclose(y.numpy(), exact_softmax(x), rtol=2e-6, atol=1e-7, err_msg=f"width {width}")


@pytest.mark.parametrize("shape", [[2, 197], [1, 6, 3, 1500], [1, 12, 7, 50], [4, 3, 13]])
def test_compiled_softmax_matches_onnxruntime(tmp_path, shape):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    x[..., ::5] = -1e9  # masked positions, as attention masks write them
    compile_and_check(softmax_model(shape), tmp_path, {"x": x})


def layer_norm_model(shape: list[int], axis: int = -1, epsilon: float = 1e-5):
    rng = np.random.default_rng(len(shape))
    width = shape[axis:] if axis != -1 else shape[-1:]
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=axis, epsilon=epsilon)], "layer_norm",
        [helper.make_tensor_value_info("x", F32, shape)], [helper.make_tensor_value_info("y", F32, shape)],
        [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "g"),
         numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b")])
    return finish(graph, 17)


def test_last_axis_layer_norm_is_the_row_kernel(tmp_path):
    script = kernels(layer_norm_model([1, 197, 768]), tmp_path)
    assert "row_layer_norm" in script


def test_layer_norm_over_two_axes_stays_tvms(tmp_path):
    script = kernels(layer_norm_model([2, 5, 7, 16], axis=2), tmp_path)
    assert "row_layer_norm" not in script and "layer_norm" in script


@pytest.mark.parametrize("lanes", [16, 8, 4])
def test_layer_norm_kernel_is_right_for_every_row_width(lanes):
    """As the softmax's: every tail length, and rows narrower than a vector; values off-centre (mean 5, scale
    30) so a lane summed twice or left out shows in the mean and the variance."""
    rng = np.random.default_rng(lanes)
    target = get_target("x86-avx512").tvm()
    for width in range(1, 2 * lanes + 4):
        x = (rng.standard_normal((3, width)) * 30 + 5).astype(np.float32)
        gamma, beta = (rng.standard_normal(width).astype(np.float32) for _ in range(2))
        func = row_layer_norm([3, width], 1e-5, lanes).with_attr("global_symbol", "main")
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        y = tvm.runtime.empty((3, width), "float32")
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(gamma), tvm.runtime.tensor(beta), y)
        exact = x.astype(np.float64)
        exact = (exact - exact.mean(-1, keepdims=True)) / np.sqrt(exact.var(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(y.numpy(), exact * gamma + beta, rtol=1e-4, atol=1e-5, err_msg=f"width {width}")


@pytest.mark.parametrize("shape, epsilon", [([1, 1500, 384], 1e-5), ([1, 197, 768], 1e-12), ([2, 3, 13], 1e-3)])
def test_compiled_layer_norm_matches_onnxruntime(tmp_path, shape, epsilon):
    x = (np.random.default_rng(7).standard_normal(shape) * 4 + 1).astype(np.float32)
    compile_and_check(layer_norm_model(shape, epsilon=epsilon), tmp_path, {"x": x})


def layer_norm_projections_model(rows: int, width: int = 64, projections: int = 3):
    """A layer norm whose output PROJECTIONS matmuls with constant weights read (ViT's Q, K and V)."""
    rng = np.random.default_rng(rows)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, epsilon=1e-6)]
    nodes += [helper.make_node("MatMul", ["n", f"w{i}"], [f"y{i}"]) for i in range(projections)]
    graph = helper.make_graph(
        nodes, "projections", [helper.make_tensor_value_info("x", F32, [1, rows, width])],
        [helper.make_tensor_value_info(f"y{i}", F32, [1, rows, width]) for i in range(projections)],
        [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "g"),
         numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b")]
        + [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.1, f"w{i}")
           for i in range(projections)])
    return finish(graph, 17)


def test_layer_norm_writes_the_padded_rows_its_matmuls_read(tmp_path):
    """197 rows (no register tile divides them) are padded to 200 for the matmuls (kiln.PadRows): once, not once
    per matmul, and by the layer norm kernel itself, which writes the 3 zero rows (no pad kernel)."""
    script = kernels(layer_norm_projections_model(197), tmp_path)
    calls = [line for line in script.splitlines() if "R.call_tir(cls.row_layer_norm" in line]
    assert len(calls) == 1 and "(1, 200, 64)" in calls[0]
    assert "cls.pad" not in script
    x = (np.random.default_rng(3).standard_normal((1, 197, 64)) * 3 + 1).astype(np.float32)
    compile_and_check(layer_norm_projections_model(197), tmp_path, {"x": x})


def test_padded_layer_norm_kernel_zeroes_the_extra_rows():
    rng = np.random.default_rng(0)
    target = get_target("x86-avx512").tvm()
    x = (rng.standard_normal((1, 13, 40)) * 5 + 2).astype(np.float32)
    gamma, beta = (rng.standard_normal(40).astype(np.float32) for _ in range(2))
    func = row_layer_norm([1, 13, 40], 1e-5, 16, zero_rows=3).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    y = tvm.runtime.tensor(np.full((1, 16, 40), np.nan, np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(gamma), tvm.runtime.tensor(beta), y)
    exact = x.astype(np.float64)
    exact = (exact - exact.mean(-1, keepdims=True)) / np.sqrt(exact.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.numpy()[:, :13], exact * gamma + beta, rtol=1e-4, atol=1e-5)
    assert not y.numpy()[:, 13:].any()
