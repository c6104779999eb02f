"""The int8 kernels against numpy: VNNI (vpdpbusd) and AMX (tdpbusd) convolutions and matmuls, the
instructions looked up in the generated assembly, and AMX builds against VNNI builds."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

import compiler
import runtime
from benchmarks.zoo import bert_encoder
from compiler.kernels import dot_product
from compiler.schedules.amx import AMXContraction
from compiler.schedules.dot_product import DotProductContraction
from compiler.targets import get_target
from runtime.bench import random_inputs
from tests.models import save
from tests.quantize.helpers import AMX_TARGET, VNNI_TARGET, cosine, needs_amx, needs_vnni, tiny_cnn


def _build(tensors: list, target_name: str = VNNI_TARGET):
    """Schedule the TE kernel with Kiln's dot-product rule and compile it."""
    target = get_target(target_name).tvm()
    func = te.create_prim_func(tensors)
    with target:
        sch = DotProductContraction(16).apply(func, target, False)
    assert sch is not None, "the dot-product rule declined the int8 kernel"
    return tvm.compile(sch.mod, target=target)


@needs_vnni
def test_int8_conv_matches_numpy_and_uses_vnni(rng):
    cin, cout, size, zero = 3, 32, 9, 7  # 3 input channels: padded to the 4 of one dot product
    x = te.placeholder((1, size, size, cin), "uint8", name="x")
    weight = rng.integers(-127, 128, (3, 3, cin, cout)).astype(np.int8)
    packed = dot_product.pack_weight(weight, 4)
    w = te.placeholder(packed.shape, "int8", name="w")
    out = dot_product.dot_conv2d(x, w, (2, 2), (1, 1, 1, 1), (1, 1), "int32", pad_value=zero)
    kernel = _build([x, w, out])
    assert "vpdpbusd" in kernel.mod.inspect_source("asm")
    data = rng.integers(0, 256, (1, size, size, cin)).astype(np.uint8)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.int32))
    kernel(tvm.runtime.tensor(data), tvm.runtime.tensor(packed), result)
    padded = np.pad(data.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=zero)
    expected = np.zeros(result.shape, np.int64)
    for i in range(3):
        for j in range(3):
            window = padded[:, i:i + 2 * result.shape[1]:2, j:j + 2 * result.shape[2]:2, :]
            expected += np.einsum("nhwc,co->nhwo", window, weight[i, j].astype(np.int64))
    np.testing.assert_array_equal(result.numpy(), expected)


@needs_vnni
def test_int8_matmul_with_dequantize_matches_numpy(rng):
    rows, depth, cols = 10, 50, 48  # depth not a multiple of 4
    x = te.placeholder((rows, depth), "uint8", name="x")
    weight = rng.integers(-127, 128, (depth, cols)).astype(np.int8)
    packed = dot_product.pack_weight(weight, 4)
    w = te.placeholder(packed.shape, "int8", name="w")
    correction = te.placeholder((cols,), "int32", name="correction")
    scale = te.placeholder((cols,), "float32", name="scale")
    out = dot_product.dequantize_sums(dot_product.dot_matmul(x, w, "int32"), correction, scale)
    kernel = _build([x, w, correction, scale, out])
    data = rng.integers(0, 256, (rows, depth)).astype(np.uint8)
    corr = rng.integers(-1000, 1000, cols).astype(np.int32)
    scales = rng.uniform(0.001, 0.01, cols).astype(np.float32)
    result = tvm.runtime.tensor(np.zeros((rows, cols), np.float32))
    kernel(*(tvm.runtime.tensor(a) for a in (data, packed, corr, scales)), result)
    expected = ((data.astype(np.int64) @ weight.astype(np.int64)) - corr).astype(np.float32) * scales
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)


@needs_vnni
@pytest.mark.parametrize("stride", [1, 2])
def test_uint8_depthwise_matches_the_float_convolution_of_the_dequantized_input(rng, stride):
    """A depthwise site reads its input as uint8 (x = (q - zero point) x scale): the weights carry the scale,
    the padding is the zero point and a per-channel offset removes it. Scheduled by Kiln's float32 rule."""
    from compiler.schedules.contraction import Contraction  # noqa: PLC0415

    channels, size, zero, scale = 32, 11, 37, 0.05
    weight = rng.standard_normal((3, 3, channels)).astype(np.float32)
    scaled = (weight * scale).astype(np.float32)
    offset = (zero * scaled.astype(np.float64).sum(axis=(0, 1))).astype(np.float32)
    q = te.placeholder((1, size, size, channels), "uint8", name="q")
    w = te.placeholder(scaled.shape, "float32", name="w")
    off = te.placeholder(offset.shape, "float32", name="offset")
    out = dot_product.depthwise_u8(q, w, off, (stride, stride), (1, 1, 1, 1), (1, 1), zero)
    target = get_target(VNNI_TARGET).tvm()
    with target:
        sch = Contraction(16).apply(te.create_prim_func([q, w, off, out]), target, False)
    assert sch is not None, "the float32 contraction rule declined the uint8 depthwise kernel"
    kernel = tvm.compile(sch.mod, target=target)
    data = rng.integers(0, 256, (1, size, size, channels)).astype(np.uint8)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.float32))
    kernel(*(tvm.runtime.tensor(a) for a in (data, scaled, offset)), result)
    x = np.pad((data.astype(np.float64) - zero) * scale, ((0, 0), (1, 1), (1, 1), (0, 0)))
    size_out = result.shape[1]
    expected = sum(x[:, i:i + stride * size_out:stride, j:j + stride * size_out:stride, :] * weight[i, j]
                   for i in range(3) for j in range(3))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("zero", [0, 3, 128])
def test_quantize_rounds_half_to_even_before_the_zero_point_and_clips(zero):
    """QuantizeLinear's rounding: round(x / scale) half to even, then + zero point, then clip; exact halves with
    an odd zero point tell rounding before the zero point from rounding after it."""
    x = te.placeholder((64,), name="x")
    q = dot_product.quantize_input(x, 0.25, zero)
    kernel = tvm.compile(te.create_prim_func([x, q]), target="llvm")
    values = np.array([k / 4 + 0.125 for k in range(-20, 20)] + [-1e9, 1e9, -40.0, 70.0] + [0.0] * 20, np.float32)
    result = tvm.runtime.tensor(np.zeros(64, np.uint8))
    kernel(tvm.runtime.tensor(values), result)
    expected = np.clip(np.round(values.astype(np.float64) * 4) + zero, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(result.numpy(), expected)


@needs_amx
@pytest.mark.parametrize("cin", [16, 96])
def test_amx_conv_matches_numpy_and_uses_tile_instructions(rng, cin):
    """96 channels: 3x3x96 = 864 terms padded to 896, copied 32 at a time (a vector never spans two window
    positions). The windows are copied block by block inside the parallel loop, not all first."""
    from runtime.tvm_runtime import enable_amx

    enable_amx()
    size, cout, zero = 10, 32, 5  # 100 output rows: tiles of 10 rows
    x = te.placeholder((1, size, size, cin), "uint8", name="x")
    weight = rng.integers(-127, 128, (3, 3, cin, cout)).astype(np.int8)
    depth = dot_product.amx_depth(9 * cin, 4)
    packed = dot_product.pack_weight(weight.reshape(-1, cout), 4, depth)
    w = te.placeholder(packed.shape, "int8", name="w")
    rows, lead = dot_product.im2col(x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), depth, pad_value=zero)
    out = dot_product.amx_contract(rows, w, lead, "int32")
    target = get_target(AMX_TARGET).tvm()
    func = te.create_prim_func([x, w, out])
    with target:
        sch = AMXContraction(16).apply(func, target, False)
    assert sch is not None, "the AMX rule declined the kernel"
    window_loops = sch.get_loops(sch.get_sblock("im2col"))
    assert sch.get(window_loops[0]).kind == tvm.tirx.ForKind.PARALLEL and len(window_loops) == 4
    kernel = tvm.compile(sch.mod, target=target)
    assert "tdpbusd" in kernel.mod.inspect_source("asm")
    data = rng.integers(0, 256, (1, size, size, cin)).astype(np.uint8)
    result = tvm.runtime.tensor(np.zeros((1, size, size, cout), np.int32))
    kernel(tvm.runtime.tensor(data), tvm.runtime.tensor(packed), result)
    padded = np.pad(data.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=zero)
    expected = sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + size, j:j + size, :], weight[i, j].astype(np.int64))
                   for i in range(3) for j in range(3))
    np.testing.assert_array_equal(result.numpy(), expected)


@needs_amx
@pytest.mark.parametrize("which", ["cnn", "encoder"])
def test_amx_build_matches_the_vnni_build(tmp_path, which):
    """Same calibration, same integer sums: the AMX and the VNNI artifacts must agree to float rounding; the
    encoder's attention, which the AMX build runs in bf16 (kiln.AttentionBF16), to bf16's 8 bits."""
    model = tiny_cnn() if which == "cnn" else bert_encoder(layers=1, hidden=64, heads=2, ffn=128, seq=16, batch=1)
    path = save(model, tmp_path)
    builds = {}
    for target in (AMX_TARGET, VNNI_TARGET):
        dump = tmp_path / target
        artifact = compiler.compile(path, target=target, output=tmp_path / f"{target}.so", quantize="int8",
                                    calibration="random:8", tuning_log="none", dump_dir=dump, dump_kinds=("asm",))
        builds[target] = (runtime.load(artifact.path), (dump / "kernels.s").read_text())
    assert "tdpbusd" in builds[AMX_TARGET][1] and "tdpbusd" not in builds[VNNI_TARGET][1]
    feeds = random_inputs(builds[AMX_TARGET][0].inputs, seed=3)
    amx, vnni = (next(iter(m.run(feeds).values())) for m, _ in builds.values())
    if which == "cnn":
        np.testing.assert_allclose(amx, vnni, rtol=1e-5, atol=1e-5 * np.abs(vnni).max())
        return
    assert "tdpbf16ps" in builds[AMX_TARGET][1] and "tdpbf16ps" not in builds[VNNI_TARGET][1]
    assert cosine(amx, vnni) > 0.999
    np.testing.assert_allclose(amx, vnni, atol=0.02 * np.abs(vnni).max())
