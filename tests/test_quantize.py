"""INT8 quantization: calibration, the VNNI kernels against numpy, PTQ and QDQ models against ONNX Runtime, the
manifest's accuracy fields, and the fallback to float32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tvm
from click.testing import CliRunner
from tvm import te

import compiler
import runtime
from benchmarks.zoo import GraphBuilder, bert_encoder
from compiler import calibration, dot_product
from compiler.cli import main
from compiler.fake_quant import QuantParams
from compiler.schedules.amx import AMXContraction
from compiler.schedules.dot_product import DotProductContraction
from compiler.targets import get_target
from runtime.artifact import TensorSpec
from runtime.bench import random_inputs
from runtime.errors import KilnError
from runtime.references import onnxruntime_session
from tests.models import save

VNNI_TARGET = "x86-avx512"
needs_vnni = pytest.mark.skipif(not get_target(VNNI_TARGET).runs_here(),
                                reason="this machine cannot run x86-avx512 (AVX-512 VNNI) code")
AMX_TARGET = "x86-amx"
needs_amx = pytest.mark.skipif(not get_target(AMX_TARGET).runs_here(),
                               reason="this machine has no AMX tiles (amx_tile, amx_int8)")


def tiny_cnn(size: int = 16) -> onnx.ModelProto:
    """conv(3->16, stride 2)+BN+ReLU, a residual 3x3 conv(16->16), global pool, dense 16 -> 32 -> 10."""
    g = GraphBuilder(3)
    x = g.op("Relu", [g.bn(g.conv("input", 3, 16, 3, stride=2), 16)])
    y = g.op("Relu", [g.bn(g.conv(x, 16, 16, 3), 16)])
    x = g.op("Relu", [g.op("Add", [x, y])])
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    hidden = g.op("Relu", [g.dense(pooled, 16, 32)])
    return g.image_model(g.dense(hidden, 32, 10), 1, size, 10, "tiny_cnn")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- calibration -------------------------------------------------------------------------------------------------

def test_quant_params_cover_the_range_and_zero():
    params = QuantParams.from_range(0.5, 10.0)  # widened to include 0
    assert params.zero_point == 0 and params.scale == pytest.approx(10.0 / 255)
    signed = QuantParams.from_range(-1.0, 3.0)
    assert signed.scale == pytest.approx(4.0 / 255) and signed.zero_point == round(1.0 / signed.scale)
    assert QuantParams(0.1, 0, -128, 127).as_uint8() == QuantParams(0.1, 128, 0, 255)


def test_percentile_and_entropy_clip_outliers(rng):
    observer = calibration.Observer()
    values = np.abs(rng.standard_normal(100_000)).astype(np.float32)
    values[0] = 1000.0  # one outlier
    observer.see_range(values)
    observer.see_histogram(values)
    assert observer.range("minmax") == (pytest.approx(float(values.min())), 1000.0)
    assert observer.range("percentile")[1] < 10.0
    assert 2.0 < observer.range("entropy")[1] < 1000.0


def test_load_samples_from_folder_and_errors(tmp_path):
    spec = [TensorSpec("x", "float32", [1, 3])]
    np.save(tmp_path / "a.npy", np.ones((1, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 1, 3), np.float32))  # a stack of 4 samples
    np.savez(tmp_path / "c.npz", x=np.full((1, 3), 2, np.float32))
    np.save(tmp_path / "d.npy", np.zeros((3, 3), np.float32))  # a batch of 3 for the batch-1 input
    samples = calibration.load_samples(str(tmp_path), spec)
    assert len(samples) == 9 and samples[5]["x"][0, 0] == 2 and samples[-1]["x"].shape == (1, 3)
    assert len(calibration.load_samples("random:5", spec)) == 5
    calib, held = calibration.split(samples)
    assert len(held) == 2 and len(calib) == 7
    np.save(tmp_path / "bad.npy", np.ones((2, 2), np.float32))
    with pytest.raises(KilnError, match=r"shape \[2, 2\].*expected \[1, 3\]"):
        calibration.load_samples(str(tmp_path), spec)
    with pytest.raises(KilnError, match="random:N"):
        calibration.load_samples("random:zero", spec)


# --- kernels against numpy ---------------------------------------------------------------------------------------

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


@needs_amx
def test_amx_conv_matches_numpy_and_uses_tile_instructions(rng):
    from runtime.tvm_runtime import enable_amx

    enable_amx()
    size, cin, cout, zero = 10, 16, 32, 5  # 100 output rows: tiles of 10 rows
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
    """Same calibration, same integer sums: the AMX and the VNNI artifacts must agree to float rounding."""
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
    np.testing.assert_allclose(amx, vnni, rtol=1e-5, atol=1e-5 * np.abs(vnni).max())


# --- whole models ------------------------------------------------------------------------------------------------

@needs_vnni
def test_int8_compile_matches_float_and_records_accuracy(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    artifact = compiler.compile(path, target=VNNI_TARGET, output=tmp_path / "int8.so", quantize="int8",
                                calibration="random:20", tuning_log="none")
    quant = artifact.manifest.quantization
    assert quant["mode"] == "int8" and quant["int8_sites"] >= 3  # two convolutions and the 16 -> 32 dense
    assert quant["calibration_samples"] == 16 and quant["held_back_samples"] == 4
    assert quant["accuracy"]["top1_agreement"] >= 0.75 and quant["accuracy"]["cosine_similarity"] > 0.99
    assert "kiln.QuantizeInt8" in artifact.manifest.passes
    model = runtime.load(artifact.path)
    feeds = {"input": np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    reference = onnxruntime_session(str(path), threads=1).run(None, feeds)[0]
    assert _cosine(model.run(feeds)["y" if "y" in model.run(feeds) else next(iter(model.run(feeds)))],
                   reference) > 0.99


@needs_vnni
def test_transformer_matmuls_run_in_int8(tmp_path):
    path = save(bert_encoder(layers=1, hidden=64, heads=2, ffn=128, seq=16, batch=1), tmp_path)
    artifact = compiler.compile(path, target=VNNI_TARGET, output=tmp_path / "bert.so", quantize="int8",
                                calibration="random:8", calibration_method="percentile", tuning_log="none")
    quant = artifact.manifest.quantization
    assert quant["int8_sites"] >= 6  # q, k, v, output projection, two feed-forward layers
    assert quant["accuracy"]["top1_agreement"] is None and quant["accuracy"]["cosine_similarity"] > 0.99


@needs_vnni
def test_accuracy_fallback_sends_sensitive_sites_to_float(tmp_path):
    # Not a classifier, so the drop is 1 - cosine similarity, which int8 never makes exactly 0.
    path = save(bert_encoder(layers=1, hidden=64, heads=2, ffn=128, seq=16, batch=1), tmp_path)
    artifact = compiler.compile(path, target=VNNI_TARGET, output=tmp_path / "strict.so", quantize="int8",
                                calibration="random:10", max_accuracy_drop=1e-6, tuning_log="none")
    quant = artifact.manifest.quantization
    assert quant["float32_fallback"], "a 1e-6 drop bound must send some sites back to float32"
    assert quant["accuracy"]["drop"] <= 1e-6
    assert quant["int8_sites"] == quant["sites"] - len(quant["float32_fallback"])


def _qdq_model(tmp_path, operator_format: bool = False):
    """tiny_cnn quantized by ONNX Runtime's own tool (static, per-channel int8 weights, uint8 activations), in
    QDQ format or, with OPERATOR_FORMAT, as QLinearConv / QLinearMatMul / com.microsoft QLinearAdd ..."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    float_path = save(tiny_cnn(), tmp_path, "float")
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                                 for _ in range(8)])

        def get_next(self):
            return next(self.samples, None)

    qdq_path = tmp_path / ("qop.onnx" if operator_format else "qdq.onnx")
    quantize_static(str(float_path), str(qdq_path), Reader(),
                    quant_format=QuantFormat.QOperator if operator_format else QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return qdq_path


@needs_vnni
@pytest.mark.parametrize("operator_format", [False, True], ids=["qdq", "qlinear-operators"])
def test_qdq_model_compiles_to_int8_and_matches_onnxruntime_int8(tmp_path, operator_format):
    qdq_path = _qdq_model(tmp_path, operator_format)
    if operator_format:
        assert "QLinearConv" in {n.op_type for n in onnx.load(str(qdq_path)).graph.node}
    artifact = compiler.compile(qdq_path, target=VNNI_TARGET, output=tmp_path / "qdq.so", tuning_log="none")
    quant = artifact.manifest.quantization
    assert quant["sites_from_model"] >= 2 and quant["int8_sites"] == quant["sites_from_model"]
    model = runtime.load(artifact.path)
    session = onnxruntime_session(str(qdq_path), threads=1)
    output_scale = None
    for init in onnx.load(str(qdq_path)).graph.initializer:  # the scale of the last DequantizeLinear
        if init.name.endswith("_scale"):
            output_scale = float(onnx.numpy_helper.to_array(init).ravel()[0])
    for seed in range(3):
        feeds = {"input": np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)}
        ours = next(iter(model.run(feeds).values()))
        theirs = session.run(None, feeds)[0]
        # Documented tolerance: within 2 steps of the output grid (rounding ties and float summation order differ)
        assert np.abs(ours - theirs).max() <= 2 * output_scale + 1e-6, (np.abs(ours - theirs).max(), output_scale)


def test_int8_on_a_target_without_vnni_is_a_clear_error(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    result = CliRunner().invoke(main, ["compile", str(path), "--target", "host", "--quantize", "int8",
                                       "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 1
    assert "target host has no int8 dot-product instruction (avx512_vnni)" in result.output
    assert "x86-avx512" in result.output and "Traceback" not in result.output


@needs_vnni
def test_cli_quantize_reports_accuracy(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    samples = tmp_path / "calib"
    samples.mkdir()
    rng = np.random.default_rng(4)
    for i in range(6):
        np.save(samples / f"s{i}.npy", rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "cli.so"
    result = CliRunner().invoke(main, ["compile", str(path), "--target", VNNI_TARGET, "--quantize", "int8",
                                       "--calibration", str(samples), "--calibration-method", "entropy",
                                       "--tuning-log", "none", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "int8 accuracy vs float32 on 1 held-back sample(s)" in result.output
    inspected = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    manifest = json.loads(inspected.output)
    manifest = manifest.get("manifest", manifest)
    assert manifest["quantization"]["method"] == "entropy"


@needs_amx
def test_bf16_runs_on_amx_and_matches_float(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    artifact = compiler.compile(path, target=AMX_TARGET, output=tmp_path / "bf16.so", precision="bf16",
                                tuning_log="none", dump_dir=tmp_path / "dump", dump_kinds=("asm",))
    assert artifact.manifest.quantization == {"mode": "bf16", "sites": 3, "bf16_sites": 1}  # 16->16 conv
    assert "tdpbf16ps" in (tmp_path / "dump" / "kernels.s").read_text()
    model = runtime.load(artifact.path)
    session = onnxruntime_session(str(path), threads=1)
    for seed in range(3):
        feeds = random_inputs(model.inputs, seed=seed)
        ours, theirs = next(iter(model.run(feeds).values())), session.run(None, feeds)[0]
        assert _cosine(ours, theirs) > 0.999
        np.testing.assert_allclose(ours, theirs, atol=0.02 * np.abs(theirs).max())  # bf16: 8 bits of mantissa


def test_bf16_on_a_target_without_amx_is_a_clear_error(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    result = CliRunner().invoke(main, ["compile", str(path), "--target", "x86-avx512", "--precision", "bf16",
                                       "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "target x86-avx512 has no bf16 tile instructions (amx_bf16)" in result.output and "x86-amx" in result.output


@needs_vnni
def test_quantize_auto_keeps_the_faster_build(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    artifact = compiler.compile(path, target=VNNI_TARGET, output=tmp_path / "auto.so", quantize="auto",
                                calibration="random:10", tuning_log="none")
    quant = artifact.manifest.quantization
    latency = quant["latency_ms"]
    assert latency["int8"] > 0 and latency["float32"] > 0
    assert quant["mode"] == ("int8" if latency["int8"] < latency["float32"] else "none")
    assert ("kiln.QuantizeInt8" in artifact.manifest.passes) == (quant["mode"] == "int8")
    model = runtime.load(artifact.path)
    feeds = random_inputs(model.inputs, seed=2)
    reference = onnxruntime_session(str(path), threads=1).run(None, feeds)[0]
    assert _cosine(next(iter(model.run(feeds).values())), reference) > 0.99


@needs_vnni
def test_bench_judges_an_int8_artifact_as_reduced_precision(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    out = tmp_path / "int8.so"
    compiler.compile(path, target=VNNI_TARGET, output=out, quantize="int8", calibration="random:10",
                     tuning_log="none")
    result = CliRunner().invoke(main, ["bench", str(out), "--model", str(path), "--repeat", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["engines"]["kiln"]["precision"] == "int8"
    assert report["outputs_match"] is True  # within 3% of the output's range, not elementwise


def test_calibration_without_quantize_is_a_clear_error(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    result = CliRunner().invoke(main, ["compile", str(path), "--calibration", "random:4",
                                       "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: --calibration applies to int8 builds only (add --quantize int8 (or auto), or drop --calibration)" \
        in result.output
