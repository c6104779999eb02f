"""int8 models end to end: post-training int8 against float32 and ONNX Runtime, the manifest's accuracy
fields, the fallback to float32, QDQ and QLinear-operator models against ONNX Runtime's own int8 run,
--quantize auto, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import compiler
import runtime
from benchmarks.zoo import bert_encoder
from compiler.cli import main
from compiler.references import onnxruntime_session
from runtime.bench import random_inputs
from tests.corpus.models import EXPORTED
from tests.models import save
from tests.quantize.helpers import VNNI_TARGET, cosine, needs_vnni, tiny_cnn


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
    assert cosine(model.run(feeds)["y" if "y" in model.run(feeds) else next(iter(model.run(feeds)))],
                   reference) > 0.99


@needs_vnni
def test_a_real_export_with_a_symbolic_batch_quantizes_depthwise_inputs_to_uint8(tmp_path):
    """transformers' MobileNetV2 exported by torch with a dynamic batch: int8 used to stop on the symbolic row
    count (a traceback). Its depthwise convolutions read uint8 (the expanding convolution before each writes a
    quarter of the bytes), and the build runs at batch 2 close to ONNX Runtime's float32."""
    path = EXPORTED / "mobilenet-v2-torchscript.onnx"
    artifact = compiler.compile(path, target=VNNI_TARGET, output=tmp_path / "int8.so", quantize="int8",
                                calibration="random:8", tuning_log="none")
    kernels = [call["kernel"] for call in artifact.manifest.kernels["calls"]]
    depthwise = sum("u8_depthwise" in name for name in kernels)
    assert depthwise == 17 and artifact.manifest.quantization["int8_sites"] > depthwise
    feeds = {"pixel_values": np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    reference = onnxruntime_session(str(path), threads=1).run(None, feeds)
    outputs = list(runtime.load(artifact.path).run(feeds).values())
    assert outputs[0].shape == reference[0].shape and cosine(outputs[0], reference[0]) > 0.95


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
    assert cosine(next(iter(model.run(feeds).values())), reference) > 0.99


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
