"""kiln.FuseBorderTransposes: the NHWC -> NCHW transpose of a model output joins the epilogue of the convolution
before it; transposes that are not at the border, or that a kernel elsewhere shares, keep their own kernels."""

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
    assert kernels[-1].startswith("fused_") and "conv2d" in kernels[-1] and kernels[-1].endswith(
        tuple(f"transpose{i}" for i in ("", 1, 2, 3))), kernels
    assert not any(k.startswith("transpose") for k in kernels[1:]), kernels  # only the input's stays alone


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
