"""benchmarks/: the FLOP count behind the roofline, output agreement per precision, and the CI-sized suite."""

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from benchmarks.flops import model_flops
from benchmarks.run import kiln_variants
from runtime.bench import agreement
from tests.models import F32, ROOT, finish


def test_flops_count_conv_matmul_and_gemm():
    w_conv = helper.make_tensor("wc", F32, [8, 2, 3, 3], np.zeros(144, np.float32))  # groups=2: 4 in -> 8 out
    w_mm = helper.make_tensor("wm", F32, [8 * 6 * 6, 10], np.zeros(2880, np.float32))
    w_gemm = helper.make_tensor("wg", F32, [5, 10], np.zeros(50, np.float32))
    shape = helper.make_tensor("shape", 7, [2], [0, -1])
    graph = helper.make_graph([
        helper.make_node("Conv", ["x", "wc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], group=2),
        helper.make_node("Reshape", ["c", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "wm"], ["m"]),
        helper.make_node("Gemm", ["m", "wg"], ["y"], transB=1),
    ], "g", [helper.make_tensor_value_info("x", F32, ["N", 4, 12, 12])],
        [helper.make_tensor_value_info("y", F32, ["N", 5])], [w_conv, w_mm, w_gemm, shape])
    model = finish(graph)
    per_item = 2 * (8 * 6 * 6 * 2 * 3 * 3) + 2 * (288 * 10) + 2 * (10 * 5)
    assert model_flops(model, {"x": [1, 4, 12, 12]}) == per_item
    assert model_flops(model, {"x": [3, 4, 12, 12]}) == 3 * per_item


def test_a_bench_run_keeps_the_sections_it_does_not_write():
    """`make bench` rewrites RESULTS.md: its own sections are replaced, those added by other scripts or by hand
    (serving, A/B runs, sweeps) stay, before the closing line."""
    from benchmarks.report import keep_sections  # noqa: PLC0415

    old = "\n".join(["# Results", "", "## Batch 1", "", "old table", "", "## Serving", "", "served", "",
                     "Regenerate with `make bench`.", "", "## Sweep (by hand)", "", "| a |", ""])
    new = "\n".join(["# Results", "", "## Batch 1", "", "new table", "", "Regenerate with `make bench`.", ""])
    kept = keep_sections(old, new).split("\n")
    assert "new table" in kept and "old table" not in kept
    assert kept.index("## Serving") < kept.index("## Sweep (by hand)") < kept.index("Regenerate with `make bench`.")
    assert "served" in kept and "| a |" in kept
    assert keep_sections("", new) == new and keep_sections(new, new) == new


def test_reduced_precision_engines_get_a_range_tolerance():
    reference = {"y": np.linspace(-10, 10, 101, dtype=np.float32)}
    close = {"y": reference["y"] * 1.01}  # 1% off: what bf16 does, far outside fp32's tolerance
    far = {"y": reference["y"] + 2.0}
    assert agreement(close, reference, "bf16")[0] and not agreement(close, reference, "f32")[0]
    assert not agreement(far, reference, "bf16")[0]
    assert agreement(reference, reference, "f32") == (True, 0.0)


@pytest.mark.slow
def test_quick_suite_writes_results_and_plots(tmp_path):
    # one model of `make bench-quick`'s two: the harness is the same for both, and squeezenet's builds took
    # 74 s of the test's 110 (the CNN kernels are tested elsewhere; FLOP counts of convolutions above)
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "bert-mini", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in report["results"]] == ["bert-mini"]
    assert report["meta"]["peak_gflops"] > 0 and report["meta"]["quick"] is True
    for row in report["results"]:
        assert set(row["batches"]) == {"1", "8"}
        one, eight = row["batches"]["1"]["engines"], row["batches"]["8"]["engines"]
        references = {"onnxruntime", "onnxruntime-int8", "openvino", "openvino-f32"}
        assert set(kiln_variants()) | references == set(one)  # int8 / bf16 builds where this CPU has them
        assert set(eight) == references | {"kiln-tuned"}
        assert row["batches"]["8"]["gflop"] == pytest.approx(8 * row["batches"]["1"]["gflop"], rel=1e-3)
        for figures in [*one.values(), *eight.values()]:
            assert figures["median_ms"] > 0 and figures["p90_ms"] >= figures["median_ms"]
            # int8 on random-weight models drifts past the 3%-of-range check (ONNX Runtime's own int8 too)
            assert figures["outputs_match"] is True or figures["precision"] == "int8"
        assert one["onnxruntime"]["ratio"] == 1.0
        assert one["kiln-tuned"]["ratio"] == pytest.approx(
            one["kiln-tuned"]["median_ms"] / one["onnxruntime"]["median_ms"], rel=0.05)
        assert all(f["peak_rss_mb"] > 0 and f["seconds"] > 0 for f in row["footprint"].values())
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Batch 1: latency", "## Batch 8: every engine", "## Compile, start-up and memory",
                    "| bert-mini | kiln-tuned | f32 |", "![latency", "![GFLOP/s"):
        assert heading in text
    for plot in ("latency.png", "roofline.png", "tuning_curve.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # every file was renamed into place


def test_text_images_are_seeded_normalized_documents_with_ink(tmp_path):
    """The OCR models' calibration images: the folder `kiln compile --calibration` reads, one .npy per sample of
    the model's input shape, the same for the same seed, and each with dark strokes on light paper."""
    import numpy as np  # noqa: PLC0415

    from benchmarks.text_images import MEAN, STD, write_text_images  # noqa: PLC0415

    folder = write_text_images(tmp_path / "cal", (1, 3, 48, 192), count=3)
    files = sorted(folder.glob("*.npy"))
    assert [f.name for f in files] == ["text_00.npy", "text_01.npy", "text_02.npy"]
    images = [np.load(f) for f in files]
    assert all(i.shape == (1, 3, 48, 192) and i.dtype == np.float32 for i in images)
    again = write_text_images(tmp_path / "again", (1, 3, 48, 192), count=1)
    np.testing.assert_array_equal(np.load(again / "text_00.npy"), images[0])
    for image in images:
        pixels = image[0].transpose(1, 2, 0) * STD + MEAN  # back to [0, 1] RGB
        assert pixels.min() < 90 / 255 + 1e-6 and np.median(pixels) > 200 / 255 - 1e-6


def test_real_models_are_named_apart_from_the_zoo_graphs(tmp_path):
    """`make bench` measured the zoo's bert-base twice and never the real BERT-base export: both were named
    bert-base. Real models are real:NAME in benchmarks.run and benchmarks.tune_zoo."""
    from benchmarks import run, tune_zoo  # noqa: PLC0415
    from benchmarks.zoo import ZOO  # noqa: PLC0415

    for names in (run.REAL_MODELS, tune_zoo.REAL_MODELS):
        assert "real:bert-base" in names and all(n.startswith("real:") for n in names)
        assert not set(names) & set(ZOO)
    _path, _model, _shapes, batches = run.model_source("bert-base", tmp_path)
    assert batches == ()  # the zoo graph, at every batch
    assert run.real_exports.model_file("real:pp-ocr-cls")[0] == run.real_exports.model_file("pp-ocr-cls")[0]


def test_flops_of_a_matmul_whose_input_shape_inference_cannot_fix():
    """A real export's attention reshapes to dims it computes: shape inference leaves that input unknown. The
    count takes the reduction from the weight instead, and leaves out a matmul of two unknown tensors."""
    w = helper.make_tensor("w", F32, [16, 4], np.zeros(64, np.float32))
    graph = helper.make_graph([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["r"]),  # a computed shape: r's shape is unknown to inference
        helper.make_node("MatMul", ["r", "w"], ["y"]),
        helper.make_node("MatMul", ["r", "r2"], ["z"]),
    ], "g", [helper.make_tensor_value_info("x", F32, [2, 16]), helper.make_tensor_value_info("r2", F32, [16, 16])],
        [helper.make_tensor_value_info("y", F32, [2, 4]), helper.make_tensor_value_info("z", F32, None)], [w])
    assert model_flops(finish(graph), {"x": [2, 16]}) == 2 * (2 * 4) * 16


def test_onnxruntime_int8_calibrates_integer_inputs_in_their_dtype(tmp_path):
    """Token ids are int64: ONNX Runtime's quantizer was fed float32 samples for them and the real BERT-base
    export's ORT int8 row failed ("Unexpected input data type")."""
    from compiler.references import open_reference  # noqa: PLC0415

    table = helper.make_tensor("table", F32, [100, 16], np.random.default_rng(0).standard_normal(1600).astype(np.float32))
    w = helper.make_tensor("w", F32, [16, 16], np.random.default_rng(1).standard_normal(256).astype(np.float32))
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]),
                               helper.make_node("MatMul", ["e", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", 7, [1, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, 8, 16])], [table, w])
    path = tmp_path / "ids.onnx"
    import onnx  # noqa: PLC0415

    onnx.save(finish(graph), path)
    engine = open_reference("onnxruntime-int8", str(path), 1, {"ids": (1, 8)}, ["y"])
    out = engine.run({"ids": np.arange(8, dtype=np.int64)[None]})
    assert out["y"].shape == (1, 8, 16) and np.isfinite(out["y"]).all()


def test_the_latency_plot_of_a_run_of_real_models_only_has_the_batch_they_ran_at(tmp_path):
    """Real models run at batch 1 only: a run of them alone (`benchmarks.run real:bert-base`) crashed drawing an
    empty batch-8 panel (division by zero engines) after all its measuring."""
    from benchmarks.plots import latency_plot  # noqa: PLC0415

    engines = {"onnxruntime": {"ratio": 1.0, "precision": "f32"}, "kiln-tuned": {"ratio": 0.9, "precision": "f32"}}
    report = {"meta": {"batches": [1, 8], "threads": 2},
              "results": [{"model": "real:bert-base", "batches": {"1": {"engines": engines}}}]}
    plot = latency_plot(report, tmp_path / "latency.png")
    assert plot is not None and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
