"""kiln.ExpandPowers: x ** c for constant c in (1, 2, 3, 4, 0.5) as multiplications or sqrt (no scalar pow call
left in the kernels), other exponents kept; the compiled output as ONNX Runtime's. GPT-2's tanh GELU has x ** 3."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from compiler import frontend
from compiler.pipeline import fuse_kernels, simplify_graph
from compiler.targets import get_target
from tests.models import F32, compile_and_check, finish, save


def power_model(exponent: float, shape=(2, 64)):
    graph = helper.make_graph([helper.make_node("Pow", ["x", "c"], ["y"])], "power",
                              [helper.make_tensor_value_info("x", F32, list(shape))],
                              [helper.make_tensor_value_info("y", F32, list(shape))],
                              [numpy_helper.from_array(np.array(exponent, np.float32), "c")])
    return finish(graph)


def kernels(model, tmp_path) -> str:
    preset = get_target("x86-avx512")
    loaded = frontend.load_model(save(model, tmp_path), None)
    return fuse_kernels(simplify_graph(loaded, preset), preset).script()


@pytest.mark.parametrize("exponent", [1.0, 2.0, 3.0, 4.0, 0.5])
def test_small_constant_powers_leave_no_pow_call(tmp_path, exponent):
    assert "T.pow" not in kernels(power_model(exponent), tmp_path)


def test_other_exponents_stay_powers(tmp_path):
    assert "T.pow" in kernels(power_model(2.5), tmp_path)


@pytest.mark.parametrize("exponent", [1.0, 2.0, 3.0, 4.0, 0.5, 2.5])
def test_powers_match_onnxruntime(tmp_path, exponent):
    x = np.random.default_rng(3).uniform(-3, 3, (2, 64)).astype(np.float32)
    if exponent in (0.5, 2.5):
        x = np.abs(x)  # defined for x >= 0 only
    compile_and_check(power_model(exponent), tmp_path, {"x": x})
