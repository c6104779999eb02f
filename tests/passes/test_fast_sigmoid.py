"""kiln.FastSigmoid: float32 sigmoid (and SiLU, x * sigmoid(x)) as kernels of Kiln's own 2^t that vectorize,
accurate to 1e-5 relative over float32's range; the compiled output as ONNX Runtime's."""

import numpy as np
from onnx import helper

from compiler import frontend
from compiler.pipeline import fuse_kernels, simplify_graph
from compiler.targets import get_target
from runtime import load
from tests.models import F32, compile_and_check, finish, save


def silu_model(size: int = 4096):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", F32, [1, size])],
                              [helper.make_tensor_value_info("y", F32, [1, size]),
                               helper.make_tensor_value_info("s", F32, [1, size])])
    return finish(graph)


def test_no_sigmoid_intrinsic_is_left_in_the_kernels(tmp_path):
    preset = get_target("x86-avx512")
    loaded = frontend.load_model(save(silu_model(), tmp_path), None)
    kernels = fuse_kernels(simplify_graph(loaded, preset), preset).script()
    assert "T.sigmoid" not in kernels and "fast_sigmoid" in kernels
    # Kiln's 2^t (a rounding; TVM's fast_exp took a floor, and more instructions: the module's docstring)
    assert "T.nearbyint" in kernels and "T.floor" not in kernels


def test_fast_sigmoid_is_accurate_over_the_float32_range(tmp_path):
    x = np.concatenate([np.linspace(-100, 100, 2048), np.linspace(-4, 4, 2048)]).astype(np.float32)[None]
    artifact = compile_and_check(silu_model(), tmp_path, {"x": x})
    ours = load(artifact).run({"x": x})
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    sigmoid = ours["s"].astype(np.float64)
    meaningful = exact > 1e-30  # 2^t is clamped at t = 126 (x = -87.3): beyond it sigmoid is 0 to within 1.2e-38
    assert np.max(np.abs(sigmoid - exact)[meaningful] / exact[meaningful]) < 1e-5
    assert np.all(np.abs(sigmoid - exact) < 1e-7)
    np.testing.assert_allclose(ours["y"], x * exact, rtol=1e-5, atol=1e-30)
