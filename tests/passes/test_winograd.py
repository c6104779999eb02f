"""Winograd F(4x4, 3x3) and F(2x2, 3x3) convolutions (compiler/kernels/winograd.py): the transform algebra, which convolutions take it,
and compiled results against ONNX Runtime on the shapes that stress the tiling (partial tiles, asymmetric
padding, channel counts that are not a multiple of the vector width, a dynamic batch, a residual tail)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import compiler
import runtime
from compiler.kernels import winograd
from runtime.bench import random_inputs
from tests.models import F32, assert_matches_onnxruntime, finish, kiln, save


def _direct(patch: np.ndarray, weight: np.ndarray, tile: int) -> np.ndarray:
    """Valid 3x3 correlation of PATCH [tile + 2, tile + 2, C] with HWIO WEIGHT [3, 3, C, K]: [tile, tile, K]."""
    return np.stack([np.stack([np.einsum("ijc,ijck->k", patch[h:h + 3, w:w + 3], weight) for w in range(tile)])
                     for h in range(tile)])


@pytest.mark.parametrize("variant", [winograd.F4, winograd.F2], ids=["F4x4", "F2x2"])
def test_the_transforms_reproduce_a_direct_convolution_of_one_tile(variant):
    rng = np.random.default_rng(0)
    alpha, tile = variant.alpha, variant.tile
    patch, weight = rng.standard_normal((alpha, alpha, 5)), rng.standard_normal((3, 3, 5, 7))
    u = winograd.transformed_weights(weight, variant).astype(np.float64).reshape(alpha, alpha, 5, 7)
    v = np.einsum("ai,ijc,bj->abc", variant.bt, patch, variant.bt)
    m = np.einsum("abc,abck->abk", v, u)
    y = np.einsum("ua,abk,vb->uvk", variant.at, m, variant.at)
    np.testing.assert_allclose(y, _direct(patch, weight, tile), rtol=1e-5, atol=1e-5)


def test_each_convolution_takes_the_variant_whose_gemm_has_rows_enough():
    assert winograd.choose(64, 56, 56) is winograd.F4 and winograd.choose(128, 28, 28) is winograd.F4
    # ResNet-50's 14x14x256: F(4x4) has 16 tiles (its 4x weights stream for a 16-row GEMM), F(2x2) 49
    assert winograd.choose(256, 14, 14) is winograd.F2 and winograd.choose(16, 13, 13) is winograd.F2
    assert winograd.choose(512, 7, 7) is None  # 16 tiles even for F(2x2): weights 1.8x larger for no gain
    assert winograd.choose(8, 56, 56) is None  # the transforms would be the whole cost


def _conv_model(size: int, channels: int, out_channels: int, pads: list[int], batch="N",
                residual: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((out_channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=pads)]
    out_h, out_w = size + pads[0] + pads[2] - 2, size + pads[1] + pads[3] - 2
    if residual:
        assert (out_h, out_w, out_channels) == (size, size, channels)
        nodes.append(helper.make_node("Add", ["conv", "x"], ["sum"]))
    nodes.append(helper.make_node("Relu", ["sum" if residual else "conv"], ["y"]))
    graph = helper.make_graph(nodes, "winograd", [helper.make_tensor_value_info("x", F32, [batch, channels, size, size])],
                              [helper.make_tensor_value_info("y", F32, [batch, out_channels, out_h, out_w])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return finish(graph)


def _kernels(artifact: runtime.Model) -> set[str]:
    return {call["kernel"] for call in artifact.manifest.kernels["calls"]}


def _positions(artifact: runtime.Model) -> set[int]:
    """The alpha^2 of each Winograd GEMM (the first dim of its V): 36 for F(4x4), 16 for F(2x2)."""
    return {call["args"][0]["shape"][0] for call in artifact.manifest.kernels["calls"]
            if call["kernel"].startswith("winograd_gemm")}


@pytest.mark.parametrize("size, channels, out_channels, pads, residual, positions", [
    (24, 32, 64, [1, 1, 1, 1], False, 36),  # F(4x4), whole tiles
    (26, 64, 64, [1, 1, 1, 1], True, 36),  # F(4x4), partial last tiles; the residual add and relu fused
    (16, 32, 64, [1, 1, 1, 1], False, 16),  # F(2x2), whole tiles
    (13, 64, 64, [1, 1, 1, 1], True, 16),  # F(2x2), partial last tiles; the residual fused
    (19, 16, 64, [0, 0, 0, 0], False, 16),  # no padding: 17 x 17 outputs
    (18, 24, 96, [0, 1, 2, 0], False, 16),  # asymmetric padding, 18 x 17 outputs; 24 channels: half-width vectors
    (25, 24, 96, [0, 1, 2, 0], False, 36),  # the same with F(4x4): 25 x 24 outputs
])
def test_winograd_convolutions_match_onnxruntime(tmp_path, size, channels, out_channels, pads, residual, positions):
    path = save(_conv_model(size, channels, out_channels, pads, residual=residual), tmp_path)
    artifact = runtime.load(compiler.compile(path, output=tmp_path / "model.so", tuning_log="none").path)
    assert {"winograd_input", "winograd_gemm"} <= {k.removeprefix("fused_") for k in _kernels(artifact)}
    assert _positions(artifact) == {positions}
    for batch in (1, 3):
        feeds = random_inputs(artifact.inputs, {"N": batch})
        assert_matches_onnxruntime(path, artifact, feeds)


def test_small_outputs_keep_the_direct_convolution(tmp_path):
    path = save(_conv_model(7, 64, 64, [1, 1, 1, 1], batch=1), tmp_path)
    artifact = runtime.load(compiler.compile(path, output=tmp_path / "model.so", tuning_log="none").path)
    assert not any("winograd" in k for k in _kernels(artifact))
    assert_matches_onnxruntime(path, artifact)


def test_no_winograd_keeps_every_convolution_direct(tmp_path):
    path = save(_conv_model(16, 32, 64, [1, 1, 1, 1]), tmp_path)
    result = kiln("compile", path, "--no-winograd", "--tuning-log", "none", "-o", tmp_path / "direct.so")
    assert result.exit_code == 0, result.output
    direct = runtime.load(tmp_path / "direct.so")
    assert not any("winograd" in k for k in _kernels(direct))
    assert_matches_onnxruntime(path, direct)
