"""kiln.FuseRowStrips: a convolution and the depthwise convolution reading it, fused and computed in strips of rows
where the activation between them outgrows a core's L2; numerically equal to ONNX Runtime either way."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

import compiler
from compiler.schedules.row_strips import strip_rows
from tests.models import F32, assert_matches_onnxruntime, finish, save

R = np.random.default_rng(11)


def _w(*shape):
    return (R.standard_normal(shape) * 0.3).astype(np.float32)


def _block(batch, cin, size, expand, stride, first_kernel=1, fan_out=False):
    """An inverted-residual block: conv (FIRST_KERNEL square, stride 1 or 2 for a 3x3) -> Clip(0, 6) -> 3x3
    depthwise (STRIDE) -> Clip(0, 6) -> 1x1 projection; with FAN_OUT the expansion also feeds a second branch."""
    first_stride = 2 if first_kernel == 3 else 1
    pad = first_kernel // 2
    inits = [numpy_helper.from_array(v, n) for n, v in {
        "w1": _w(expand, cin, first_kernel, first_kernel), "b1": _w(expand),
        "w2": _w(expand, 1, 3, 3), "b2": _w(expand), "w3": _w(8, expand, 1, 1),
        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["e"], strides=[first_stride] * 2, pads=[pad] * 4),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
        helper.make_node("Conv", ["e6", "w2", "b2"], ["d"], group=expand, strides=[stride] * 2, pads=[1] * 4),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
        helper.make_node("Conv", ["d6", "w3"], ["y"]),
    ]
    outputs = [helper.make_value_info("y", helper.make_tensor_type_proto(F32, None))]
    if fan_out:
        nodes.append(helper.make_node("ReduceMean", ["e6"], ["m"], axes=[2, 3]))
        outputs.append(helper.make_value_info("m", helper.make_tensor_type_proto(F32, None)))
    graph = helper.make_graph(nodes, "inverted_residual",
                              [helper.make_tensor_value_info("x", F32, [batch, cin, size, size])], outputs, inits)
    return finish(graph)


def _fused_calls(manifest) -> list[str]:
    return [c["kernel"] for c in manifest.kernels["calls"] if c["kernel"].count("conv2d") == 2]


def test_strip_rows_fit_half_the_l2_with_enough_strips():
    assert strip_rows(56, 2, 3, 112 * 96 * 4) == 4  # 9 rows of 112x96: 387 KB; 7 rows would need 645
    assert strip_rows(56, 1, 3, 56 * 144 * 4) == 7  # 8 rows would leave 7 strips, too few
    assert strip_rows(112, 1, 3, 112 * 32 * 4) == 14
    assert strip_rows(7, 1, 3, 64) is None  # fewer rows than strips
    assert strip_rows(56, 1, 3, 1 << 20) is None  # not even one row's window fits


@pytest.mark.parametrize("batch, cin, size, expand, stride, first_kernel", [
    (1, 16, 112, 96, 2, 1),  # MobileNetV2's second block: a 4.8 MB expansion
    (2, 24, 56, 144, 1, 1),  # its third, at batch 2 (strips over images and rows)
    (1, 3, 112, 96, 1, 3),  # a padded 3x3 stride-2 convolution feeds the depthwise one
])
def test_wide_expansions_are_fused_into_the_depthwise_convolution(batch, cin, size, expand, stride, first_kernel,
                                                                   tmp_path):
    path = save(_block(batch, cin, size, expand, stride, first_kernel), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so")
    assert len(_fused_calls(artifact.manifest)) == 1, artifact.manifest.kernels["calls"]
    assert artifact.manifest.kernels["unscheduled"] == 0
    assert_matches_onnxruntime(path, artifact.path)


@pytest.mark.parametrize("cin, size, expand, first_kernel, fan_out", [
    (24, 28, 144, 1, False),  # 28x28x144 fits in L2: nothing to gain
    (24, 56, 144, 1, True),  # a second branch also reads the expansion: it must be stored
    (3, 224, 32, 3, False),  # MobileNetV2's stem: 32 channels, no streaming tile; faster apart, each tuned
])
def test_small_shared_or_narrow_expansions_stay_separate(cin, size, expand, first_kernel, fan_out, tmp_path):
    path = save(_block(1, cin, size, expand, 1, first_kernel, fan_out=fan_out), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so")
    assert _fused_calls(artifact.manifest) == []
    assert_matches_onnxruntime(path, artifact.path)
