"""kiln.Conv1DAsConv2D: 1-D convolutions (Whisper's stem) compiled as height-1 2-D ones, so they get Kiln's
layout, packing and schedules. Structure, and numbers against ONNX Runtime."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from compiler import frontend
from compiler.pipeline import simplify_graph
from compiler.targets import get_target
from tests.models import F32, compile_and_check, finish, save

R = np.random.default_rng(7)


def conv1d_model(channels: int, out: int, length: int, kernel: int, bias: bool = True, **attrs):
    groups = attrs.get("group", 1)
    weights = {"w": R.standard_normal((out, channels // groups, kernel)).astype(np.float32) * 0.2}
    if bias:
        weights["b"] = R.standard_normal(out).astype(np.float32)
    node = helper.make_node("Conv", ["x", *weights], ["y"], **attrs)
    graph = helper.make_graph([node], "conv1d", [helper.make_tensor_value_info("x", F32, [1, channels, length])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return finish(graph)


CASES = {  # name: (channels, out, length, kernel, attributes)
    "whisper_stem": (80, 96, 300, 3, {"pads": [1, 1]}),
    "whisper_stride_2": (96, 96, 300, 3, {"pads": [1, 1], "strides": [2]}),
    "dilated_odd_length": (12, 20, 97, 5, {"pads": [4, 4], "dilations": [2]}),
    "depthwise_wav2vec2_style": (32, 32, 64, 7, {"pads": [3, 3], "group": 32}),
}


@pytest.mark.parametrize("name", CASES)
def test_conv1d_compiles_as_conv2d_and_matches_onnxruntime(name, tmp_path):
    channels, out, length, kernel, attrs = CASES[name]
    model = conv1d_model(channels, out, length, kernel, **attrs)
    preset = get_target("x86-avx512")
    stage = simplify_graph(frontend.load_model(save(model, tmp_path), None), preset).script()
    assert "R.nn.conv1d" not in stage and "R.nn.conv2d" in stage
    x = R.standard_normal((1, channels, length)).astype(np.float32)
    compile_and_check(model, tmp_path, {"x": x})
