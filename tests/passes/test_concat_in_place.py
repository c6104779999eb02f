"""kiln.ConcatInPlace: a channel concatenation of two kernels' outputs written by the kernels themselves; the result
equals ONNX Runtime's whether or not the rewrite applies."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

import compiler
from compiler.passes.concat_in_place import concat_channels, place_kernel
from tests.models import F32, assert_matches_onnxruntime, finish, save

R = np.random.default_rng(5)


def _w(*shape):
    return (R.standard_normal(shape) * 0.3).astype(np.float32)


def _fire(size, squeeze, expand, extra_use=False, three=False, raw_input=False):
    """SqueezeNet's fire module: 1x1 squeeze -> ReLU -> (1x1 expand -> ReLU, 3x3 expand -> ReLU) -> Concat on
    channels -> the next module's 1x1 squeeze. EXTRA_USE: the 1x1 branch is also an output; THREE: a third
    branch (the 1x1 one again) in the Concat; RAW_INPUT: the Concat's first piece is the squeeze output itself,
    read by the expansions too."""
    inits = [numpy_helper.from_array(v, n) for n, v in {
        "ws": _w(squeeze, 8, 1, 1), "bs": _w(squeeze), "w1": _w(expand, squeeze, 1, 1), "b1": _w(expand),
        "w3": _w(expand, squeeze, 3, 3), "b3": _w(expand),
        "wn": _w(8, (squeeze if raw_input else expand) + expand * (2 if three else 1), 1, 1)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "ws", "bs"], ["s"]), helper.make_node("Relu", ["s"], ["s1"]),
        helper.make_node("Conv", ["s1", "w1", "b1"], ["e"]), helper.make_node("Relu", ["e"], ["e1"]),
        helper.make_node("Conv", ["s1", "w3", "b3"], ["f"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["f"], ["f1"]),
    ]
    pieces = ["s1" if raw_input else "e1", "f1"] + (["e1"] if three else [])
    nodes.append(helper.make_node("Concat", pieces, ["cat"], axis=1))
    nodes.append(helper.make_node("Conv", ["cat", "wn"], ["y"]))  # the next squeeze: keeps the concat in NHWC
    outputs = ["y"] + (["e1"] if extra_use else [])
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", F32, [1, 8, size, size])],
                              [helper.make_value_info(o, helper.make_tensor_type_proto(F32, None)) for o in outputs],
                              inits)
    return finish(graph)


def _kernels(artifact) -> list[str]:
    return [c["kernel"] for c in artifact.manifest.kernels["calls"]]


@pytest.mark.parametrize("size, squeeze, expand", [(55, 16, 64), (13, 8, 24)])  # Winograd 3x3 / direct 3x3
def test_fire_module_concatenation_is_written_in_place(size, squeeze, expand, tmp_path):
    path = save(_fire(size, squeeze, expand), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so")
    kernels = _kernels(artifact)
    assert not any(k.startswith("concatenate") for k in kernels), kernels
    assert sum(f"_into{2 * expand}" in k for k in kernels) == 2, kernels
    assert artifact.manifest.kernels["unscheduled"] == 0
    assert_matches_onnxruntime(path, artifact.path)


@pytest.mark.parametrize("case", ["extra_use", "three", "raw_input"])
def test_concatenations_it_cannot_take_over_stay_copies(case, tmp_path):
    path = save(_fire(13, 8, 24, **{case: True}), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so")
    kernels = _kernels(artifact)
    if case != "raw_input":  # with the squeeze output as a piece, the 3x3 branch alone could still be placed
        assert any("concatenate" in k for k in kernels), kernels
    assert_matches_onnxruntime(path, artifact.path)


def test_an_activation_after_the_concatenation_moves_onto_its_pieces(tmp_path):
    """ShuffleNet's downsampling unit: Concat(AvgPool(x), Conv(x)) -> ReLU. The ReLU goes into each piece's
    kernel, so the concatenation is a plain one, written in place."""
    inits = [numpy_helper.from_array(v, n) for n, v in {"w0": _w(24, 8, 1, 1), "w": _w(40, 24, 3, 3),
                                                         "wn": _w(16, 64, 1, 1)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["x0"]),  # as in the network, the unit's input is already NHWC
        helper.make_node("AveragePool", ["x0"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x0", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["p", "c"], ["cat"], axis=1),
        helper.make_node("Relu", ["cat"], ["r"]),
        helper.make_node("Conv", ["r", "wn"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "shuffle_down", [helper.make_tensor_value_info("x", F32, [1, 8, 28, 28])],
                              [helper.make_value_info("y", helper.make_tensor_type_proto(F32, None))], inits)
    path = save(finish(graph), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so")
    kernels = _kernels(artifact)
    assert not any("concatenate" in k for k in kernels), kernels
    assert sum("relu" in k and "_into64" in k for k in kernels) == 2, kernels
    assert_matches_onnxruntime(path, artifact.path)


def test_concat_channels_recognises_only_a_two_piece_channel_concatenation():
    import tvm  # noqa: PLC0415
    from tvm import te, topi  # noqa: PLC0415

    a, b = te.placeholder((1, 4, 4, 8), name="a"), te.placeholder((1, 4, 4, 24), name="b")
    assert concat_channels(te.create_prim_func([a, b, topi.concatenate([a, b], axis=3)])) == (8, 24)
    c = te.placeholder((1, 4, 8, 8), name="c")
    assert concat_channels(te.create_prim_func([a, c, topi.concatenate([a, c], axis=2)])) is None
    assert concat_channels(te.create_prim_func([a, a, topi.add(a, a)])) is None
    place = place_kernel((1, 4, 4, 8), 32, 24)
    assert "v3 + T.int64(24)" in tvm.IRModule({"main": place}).script()
