"""kiln.FitPoolWindows: pool windows larger than their padded input (Hugging Face EfficientNet's pooler) cut to
it, ceil_mode dropped where it changes nothing; the outputs as ONNX Runtime's."""

import numpy as np
import pytest
from onnx import helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from compiler.passes.fit_pool_windows import fit_pool_windows
from tests.models import F32, compile_and_check, finish


def pool_model(op: str, size: int, window: int, stride: int, pads: int = 0, **attrs):
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[window, window], strides=[stride, stride],
                            pads=[pads] * 4, **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", F32, [1, 24, size, size])],
                              [helper.make_tensor_value_info("y", F32, None)])
    return finish(graph)


def pools(mod) -> list:
    found = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: found.append(e) if isinstance(e, relax.Call)
                                    and "pool" in getattr(e.op, "name", "") else None)
    return found


CASES = {  # name: (op, input size, window, stride, pads, attributes)
    "efficientnet_pooler": ("AveragePool", 7, 1280, 1280, 0, {"ceil_mode": 1, "count_include_pad": 1}),
    "padding_counts": ("AveragePool", 5, 64, 64, 1, {"ceil_mode": 1, "count_include_pad": 1}),
    "padding_does_not_count": ("AveragePool", 5, 64, 64, 1, {"ceil_mode": 1, "count_include_pad": 0}),
    "max": ("MaxPool", 6, 100, 100, 0, {"ceil_mode": 1}),
    "ceil_with_no_effect": ("MaxPool", 9, 3, 2, 0, {"ceil_mode": 1}),
}


@pytest.mark.parametrize("name", CASES)
def test_fitted_pools_match_onnxruntime(name, tmp_path):
    op, size, window, stride, pads, attrs = CASES[name]
    model = pool_model(op, size, window, stride, pads, **attrs)
    (before,), (after,) = pools(from_onnx(model)), pools(fit_pool_windows(from_onnx(model)))
    if window > size:
        assert [int(k) for k in after.attrs.pool_size] == [size + 2 * pads] * 2
    assert not after.attrs.ceil_mode and before.attrs.ceil_mode
    x = np.random.default_rng(0).standard_normal((1, 24, size, size)).astype(np.float32)
    compile_and_check(model, tmp_path, {"x": x})


def test_a_ceil_mode_that_adds_a_window_stays():
    model = pool_model("MaxPool", 8, 3, 2, 0, ceil_mode=1)  # (8 - 3) / 2 leaves a remainder: one more window
    (after,) = pools(fit_pool_windows(from_onnx(model)))
    assert after.attrs.ceil_mode and [int(k) for k in after.attrs.pool_size] == [3, 3]
