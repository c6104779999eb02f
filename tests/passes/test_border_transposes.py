"""kiln.FuseBorderTransposes: the NHWC -> NCHW transpose of a model output joins the epilogue of the convolution
before it; transposes that are not at the border, or that a kernel elsewhere shares, keep their own kernels.
kiln.FuseInputTransposes: the NCHW -> NHWC transpose of a model input is computed inside the depthwise
convolution that reads it (compiler/schedules/transposed_input.py)."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

import compiler
from tests.models import F32, assert_matches_onnxruntime, finish, save

R = np.random.default_rng(3)


def _conv(channels: int, outs: int, size: int, kernel: int, groups: int = 1, second_output: bool = False):
    """conv (same padding) + bias + ReLU, NCHW in and out; SECOND_OUTPUT also returns the convolution's input
    doubled (a transpose back of something no contraction makes)."""
    weight = (R.standard_normal((outs, channels // groups, kernel, kernel)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], kernel_shape=[kernel, kernel],
                              pads=[kernel // 2] * 4, group=groups), helper.make_node("Relu", ["t"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", F32, [1, outs, size, size])]
    if second_output:
        nodes.append(helper.make_node("Add", ["x", "x"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", F32, [1, channels, size, size]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", F32, [1, channels, size, size])],
                              outputs, [numpy_helper.from_array(weight, "w"),
                                        numpy_helper.from_array(R.standard_normal(outs).astype(np.float32), "b")])
    return finish(graph)


def _kernels(artifact) -> list[str]:
    return [call["kernel"] for call in artifact.manifest.kernels["calls"]]


@pytest.mark.parametrize("channels, outs, size, kernel, groups", [
    (144, 144, 20, 3, 144),  # depthwise, the streaming tile's shape of channels
    (24, 40, 13, 1, 1),  # 1x1, 40 outputs: several narrower vectors, an odd map
    (16, 32, 9, 3, 1),  # 3x3, packed weights
    (768, 768, 7, 7, 768),  # ConvNeXt's 7x7 depthwise over a 7x7 map
])
def test_the_output_transpose_is_written_by_the_convolution(tmp_path, channels, outs, size, kernel, groups):
    path = save(_conv(channels, outs, size, kernel, groups), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "c.so")
    assert_matches_onnxruntime(path, artifact.path)
    kernels = _kernels(artifact)
    assert "kiln.FuseBorderTransposes" in artifact.manifest.passes
    assert "conv2d" in kernels[-1] and kernels[-1].endswith(tuple(f"transpose{i}" for i in ("", 1, 2, 3))), kernels
    # only the input's transpose may stay alone (a depthwise convolution computes it: kiln.FuseInputTransposes)
    assert not any(k.startswith("transpose") and "conv2d" not in k for k in kernels[1:]), kernels


def test_a_transpose_inside_the_model_keeps_its_kernel(tmp_path):
    """conv -> ReLU -> Flatten: the transpose back to NCHW feeds the flatten, not an output; it stays a kernel of
    its own (fused with the reshape, as before)."""
    graph = _conv(16, 32, 9, 3).graph
    graph.node.append(helper.make_node("Flatten", ["y"], ["flat"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("flat", F32, [1, 32 * 9 * 9]))
    path = save(finish(graph), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "c.so")
    assert_matches_onnxruntime(path, artifact.path)
    kernels = _kernels(artifact)
    assert not any("conv2d" in k and "transpose" in k for k in kernels), kernels
    assert any("transpose" in k and "conv2d" not in k for k in kernels[1:]), kernels


def _depthwise(channels: int, size: int, kernel: int, stride: int, batch):
    """A depthwise convolution (same padding) + bias, NCHW in and out, of BATCH images (a number, or a name for a
    dynamic batch)."""
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                          pads=[kernel // 2] * 4, group=channels)], "depthwise",
        [helper.make_tensor_value_info("x", F32, [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", F32, [batch, channels, out, out])],
        [numpy_helper.from_array(R.standard_normal((channels, 1, kernel, kernel)).astype(np.float32), "w"),
         numpy_helper.from_array(R.standard_normal(channels).astype(np.float32), "b")])
    return finish(graph)


@pytest.mark.parametrize("channels, size, kernel, stride, batch, target", [
    (672, 14, 5, 2, 1, "auto"),  # EfficientNet's 5x5 stride 2: rows of 14 pixels, loaded as 8 + 4 + 2
    (672, 14, 5, 2, 1, "x86-avx2"),  # 8 lanes: tiles of 8 channels by 7 pixels
    (96, 56, 7, 1, 2, "auto"),  # ConvNeXt's 7x7, two images: rows in tiles of 14 pixels
    (128, 30, 3, 2, 1, "auto"),  # tiles of 15 pixels: one lane of the vector left zero
    (64, 17, 3, 1, 1, "auto"),  # 17 pixels, a prime above a tile: the transpose as vector gathers
])
def test_the_input_transpose_is_computed_by_the_depthwise_convolution(tmp_path, channels, size, kernel, stride,
                                                                      batch, target):
    path = save(_depthwise(channels, size, kernel, stride, batch), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "d.so", target=target)
    assert "kiln.FuseInputTransposes" in artifact.manifest.passes
    kernels = _kernels(artifact)
    assert len(kernels) == 1 and kernels[0].startswith("transpose_conv2d"), kernels
    assert_matches_onnxruntime(path, artifact.path)


def test_a_dynamic_batch_keeps_the_input_transpose_apart(tmp_path):
    """The fused kernel is built from static shapes; with a symbolic batch the two kernels stay as they were."""
    path = save(_depthwise(64, 14, 3, 1, "N"), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "d.so")
    assert any(k.startswith("transpose") and "conv2d" not in k for k in _kernels(artifact))
    x = R.standard_normal((3, 64, 14, 14)).astype(np.float32)
    assert_matches_onnxruntime(path, artifact.path, {"x": x})
