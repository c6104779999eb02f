"""kiln.PatchConvTranspose: a transposed convolution whose kernel equals its stride as matmul + depth-to-space (no
conv2d_transpose kernel left), others kept; each compiled as ONNX Runtime computes it. PP-OCRv4's detector
upsamples with two 2x2 / stride-2 ones."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from compiler import frontend
from compiler.pipeline import fuse_kernels, simplify_graph
from compiler.targets import get_target
from tests.models import F32, compile_and_check, finish, save


def conv_transpose_model(batch, channels, outs, size, kernel, stride, pads=(0, 0, 0, 0), bias=True, relu=True):
    rng = np.random.default_rng(channels + outs)
    weights = [numpy_helper.from_array(rng.standard_normal((channels, outs, *kernel)).astype(np.float32) * 0.2, "w")]
    inputs = ["x", "w"]
    if bias:
        weights.append(numpy_helper.from_array(rng.standard_normal(outs).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("ConvTranspose", inputs, ["t"], kernel_shape=list(kernel), strides=list(stride),
                              pads=list(pads))]
    nodes.append(helper.make_node("Relu" if relu else "Identity", ["t"], ["y"]))
    graph = helper.make_graph(nodes, "conv_transpose",
                              [helper.make_tensor_value_info("x", F32, [batch, channels, *size])],
                              [helper.make_tensor_value_info("y", F32, None)], weights)
    return finish(graph)


def kernels(model, tmp_path) -> str:
    preset = get_target("x86-avx512")
    loaded = frontend.load_model(save(model, tmp_path), None)
    return fuse_kernels(simplify_graph(loaded, preset), preset).script()


def test_non_overlapping_conv_transpose_is_a_matmul(tmp_path):
    script = kernels(conv_transpose_model(1, 24, 24, (20, 20), (2, 2), (2, 2)), tmp_path)
    assert "conv2d_transpose" not in script and "matmul" in script


def test_overlapping_conv_transpose_stays(tmp_path):
    script = kernels(conv_transpose_model(1, 8, 8, (10, 10), (4, 4), (2, 2), pads=(1, 1, 1, 1)), tmp_path)
    assert "conv2d_transpose" in script


@pytest.mark.parametrize("batch, channels, outs, size, kernel, stride, pads", [
    (1, 24, 24, (20, 20), (2, 2), (2, 2), (0, 0, 0, 0)),  # PP-OCR's first upsampling
    (1, 24, 1, (32, 32), (2, 2), (2, 2), (0, 0, 0, 0)),  # its last: one output channel
    (2, 5, 3, (7, 9), (2, 3), (2, 3), (0, 0, 0, 0)),  # batch 2, a kernel that is not square
    (1, 8, 8, (10, 10), (4, 4), (2, 2), (1, 1, 1, 1)),  # overlapping: TVM's conv2d_transpose
])
def test_conv_transpose_matches_onnxruntime(tmp_path, batch, channels, outs, size, kernel, stride, pads):
    x = np.random.default_rng(5).standard_normal((batch, channels, *size)).astype(np.float32)
    compile_and_check(conv_transpose_model(batch, channels, outs, size, kernel, stride, pads), tmp_path, {"x": x})


def test_without_bias_or_activation(tmp_path):
    x = np.random.default_rng(6).standard_normal((1, 4, 6, 6)).astype(np.float32)
    compile_and_check(conv_transpose_model(1, 4, 6, (6, 6), (2, 2), (2, 2), bias=False, relu=False), tmp_path,
                      {"x": x})
