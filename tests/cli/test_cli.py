"""The `kiln` command line: each command works, and each error is one line with a non-zero exit."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from compiler.cli import main
from compiler.cli.reference import reference
from tests.models import F32, ROOT, finish, kiln, save, single_op_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    w = np.random.default_rng(5).standard_normal((4, 3, 3, 3)).astype(np.float32)
    return save(single_op_model("Conv", {"x": ["N", 3, 8, 8]}, weights={"w": w}, pads=[1, 1, 1, 1]), folder)


@pytest.fixture(scope="module")
def artifact(model):
    out = model.with_name("conv.so")
    result = CliRunner().invoke(main, ["compile", str(model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert re.search(r"\b\d+ of [1-9]\d* kernel\(s\) from tuning records, 0 on naive schedules", result.output)
    return out


def test_targets_lists_presets_and_auto():
    result = kiln("targets")
    assert result.exit_code == 0
    for name in ("host", "x86-avx2", "x86-avx512"):
        assert name in result.output
    assert result.output.count("[auto]") == 1
    listed = json.loads(kiln("targets", "--json").output)
    assert {t["name"] for t in listed} >= {"host", "x86-avx2", "x86-avx512"}
    assert sum(t["auto"] for t in listed) == 1


def test_inspect_artifact_json_schema(artifact):
    report = json.loads(kiln("inspect", artifact, "--json").output)
    assert report["kind"] == "artifact" and report["size_bytes"] == artifact.stat().st_size
    manifest = report["manifest"]
    for key in ("format_version", "source_model", "source_sha256", "inputs", "outputs", "target", "tvm_target",
                "tvm_version", "kiln_version", "passes", "quantization", "tuning", "library_sha256", "kernels",
                "arch", "cpu_features", "created", "compile_seconds"):
        assert key in manifest, key
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3, 8, 8]}]


def test_inspect_model_reports_ops_and_dynamic_dims(model):
    report = json.loads(kiln("inspect", model, "--json").output)
    assert report["kind"] == "model"
    assert report["operators"] == [{"op": "Conv", "count": 1, "supported": True}]
    assert report["dynamic_dims"] == ["N"] and report["suggested_input_shape"] == ["x=1x3x8x8"]
    text = kiln("inspect", model).output
    assert "--input-shape x=1x3x8x8" in text and "Conv" in text


def test_run_random_and_npz(artifact, tmp_path):
    summary = kiln("run", artifact, "--random")
    assert summary.exit_code == 0 and "y: float32[1x4x8x8]" in summary.output
    x = np.ones((2, 3, 8, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert kiln("run", artifact, "--input", f"x={tmp_path / 'x.npy'}", "--output", out).exit_code == 0
    with np.load(out) as saved:
        assert saved["y"].shape == (2, 4, 8, 8)


def test_bench_json_compares_with_onnxruntime(artifact, model):
    result = kiln("bench", artifact, "--model", model, "--repeat", 4, "--threads", 1, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # progress goes to stderr, the report alone to stdout
    assert report["outputs_match"] is True
    for engine in ("kiln", "onnxruntime"):
        assert report[engine]["median_ms"] > 0 and report[engine]["runs"] == 4
        assert report[engine]["p90_ms"] >= report[engine]["median_ms"]
    assert report["ratio"] == pytest.approx(report["kiln"]["median_ms"] / report["onnxruntime"]["median_ms"], 0.01)


def test_bench_against_openvino_checks_every_engine(artifact, model):
    result = kiln("bench", artifact, "--model", model, "--against", "onnxruntime,openvino,openvino-f32",
                  "--repeat", 4, "--threads", 1, "--batch", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["engines"]) == ["kiln", "onnxruntime", "openvino", "openvino-f32"]
    assert report["reference"] == "onnxruntime" and report["outputs_match"] is True
    engines = report["engines"]
    assert engines["openvino-f32"]["precision"] == "f32" and engines["openvino-f32"]["max_abs_error"] < 1e-4
    for name, figures in engines.items():
        assert figures["outputs_match"] is True, name
        assert figures["runs"] == 4 and figures["throughput_per_s"] > 0
        assert figures["ratio"] == pytest.approx(figures["median_ms"] / engines["onnxruntime"]["median_ms"], 0.01)


def test_bench_onnx_model_directly(model):
    result = kiln("bench", model, "--repeat", 2, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "outputs match" in result.output and "kiln / onnxruntime latency" in result.output


@pytest.mark.parametrize("args, message", [
    (["compile", "missing.onnx"], "error: model file not found: missing.onnx"),
    (["compile", "{model}", "--target", "pentium"], "error: unknown target 'pentium' (known targets: auto, "),
    (["compile", "{model}", "--input-shape", "x=1xa"], "error: bad --input-shape 'x=1xa'"),
    (["compile", "{model}", "--input-value", "axes"], "error: bad --input-value 'axes'"),
    (["compile", "{model}", "--input-value", "nope=1"], "error: --input-value names unknown input(s) nope"),
    (["compile", "{model}", "-o", "model.kiln"], "error: the artifact path model.kiln does not end in .so"),
    (["run", "{artifact}"], "error: no inputs given (pass --input NAME=FILE.npy"),
    (["run", "{model}", "--random"], "is not a Kiln artifact"),
    (["bench", "{artifact}", "--model", "nowhere.onnx"], "error: ONNX model not found: nowhere.onnx"),
    (["bench", "{artifact}", "--against", "onnxruntime,tensorrt"],
     "error: unknown engine(s) for --against: tensorrt (known: onnxruntime, onnxruntime-int8, openvino, openvino-f32, "
     "none)"),
])
def test_errors_are_one_line(args, message, model, artifact):
    result = kiln(*[a.format(model=model, artifact=artifact) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unsupported_ops_exit_code_and_debug_traceback(tmp_path):
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="d0")], "det",
                              [helper.make_tensor_value_info("x", F32, [3, 3])],
                              [helper.make_tensor_value_info("y", F32, [])])
    path = save(finish(graph), tmp_path)
    plain = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(path)], cwd=ROOT,
                           capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == (f"error: model.onnx uses 1 unsupported operator type(s): Det x1 (first: d0) "
                                    f"(replace them in the exporter, or file an issue naming these ops)")
    debug = subprocess.run([sys.executable, "-m", "compiler.cli", "--debug", "compile", str(path)], cwd=ROOT,
                           capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    # where users put it: after the command and its arguments
    last = kiln("compile", path, "--debug")
    assert last.exit_code != 0 and "No such option" not in last.output and last.exc_info is not None


def test_compile_warns_about_heavy_kernels_without_a_schedule(tmp_path):
    # 3-D max-pooling with stride 2 on the innermost axis has no default rule: it must not pass silently.
    path = save(single_op_model("MaxPool", {"x": [1, 16, 32, 64, 64]}, kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
                tmp_path)
    result = kiln("compile", path, "-o", tmp_path / "pool3d.so")
    assert result.exit_code == 0, result.output
    assert "warning: 1 heavy kernel(s) run as naive loops" in result.output
    assert "max_pool3d (" in result.output
    manifest = json.loads(kiln("inspect", tmp_path / "pool3d.so", "--json").stdout)["manifest"]
    heavy = manifest["kernels"]["heavy_unscheduled"]
    assert [h["kernel"] for h in heavy] == ["max_pool3d"] and heavy[0]["mflop"] >= 1.0


def test_run_profile_lists_kernels_by_share(artifact):
    result = kiln("run", artifact, "--random", "--profile")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("kernels: ") and "inside whole runs" in lines[0] and "timed alone" in lines[0]
    rows = [line.split() for line in lines[2:] if line.strip().endswith(tuple("0123456789_abcdefghijklmnopqrstuvwxyz"))
            and "%" in line]
    assert rows and any("conv2d" in row[-1] for row in rows)
    shares, in_runs = ([float(row[i].rstrip("%")) for row in rows] for i in range(2))
    assert shares == sorted(shares, reverse=True) and 99.0 <= sum(shares) <= 101.0
    assert all(ms > 0 for ms in in_runs) and all(float(row[2]) > 0 for row in rows if "conv2d" in row[-1])


def test_compile_dump_and_pass_times(model, tmp_path):
    out = tmp_path / "dump"
    result = kiln("compile", model, "-o", tmp_path / "d.so", "--dump", "relax,tir,ll,asm", out, "--pass-times")
    assert result.exit_code == 0, result.output
    assert "kiln.FoldBatchNorm:" in result.stdout and "FuseOps:" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["kernels.ll", "kernels.s", "kernels.tir.py", "relax.py"]
    assert "T.prim_func" in (out / "kernels.tir.py").read_text()
    assert "define" in (out / "kernels.ll").read_text() and ".text" in (out / "kernels.s").read_text()
    bad = kiln("compile", model, "--dump", "tir,foo", out)
    assert bad.exit_code == 1 and "unknown --dump kind(s): foo (use some of relax,tir,ll,asm)" in bad.output


def test_written_files_get_the_usual_mode(artifact):
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert artifact.stat().st_mode & 0o777 == 0o666 & ~mask


def test_version_names_kiln_and_the_tvm_it_compiles_with():
    result = kiln("--version")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"kiln \d+\.\d+\.\d+ \(apache-tvm 0\.27[^,]*, Python 3\.\d+\.\d+\)\n", result.output)


def test_every_command_help_shows_its_defaults_and_the_reference_is_current():
    def help_text(command: str) -> str:  # click wraps at the terminal's width: compare words, not lines
        return " ".join(kiln(command, "--help").output.split())

    assert "[default: auto]" in help_text("compile") and "[default: NHWC]" in help_text("compile")
    assert "[default: 8000]" in help_text("serve") and "[default: 64]" in help_text("serve")
    assert "[default: onnxruntime]" in help_text("bench")
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == reference(), "docs/cli.md is out of date: run `make docs`"
    assert all(f"## kiln {name}" in committed for name in ("compile", "tune", "run", "inspect", "bench", "serve",
                                                              "bundle", "targets"))


def test_a_terminated_compile_leaves_no_scratch_behind(tmp_path):
    """SIGTERM unwinds like Ctrl-C: the scratch folders and the temporary output beside the artifact go."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from benchmarks.zoo import resnet  # noqa: PLC0415

    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    model = save(resnet((1,), width=16, size=32, classes=4, batch=1), tmp_path, "cnn")
    # started with SIGTERM blocked, as from a parent that blocks it: kiln unblocks the signals it acts on
    process = subprocess.Popen([sys.executable, "-m", "compiler.cli", "compile", str(model), "-o", str(out / "m.so")],
                               cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)}, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}))
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("kiln-") for p in scratch.iterdir()):  # it is building: kill it now
        assert process.poll() is None and time.monotonic() < deadline, "the compile ended before it was killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 128 + signal.SIGTERM, process.stderr.read()
    assert [p.name for p in scratch.iterdir() if p.name.startswith("kiln-")] == []
    assert list(out.iterdir()) in ([], [out / "m.so"])  # no .m.so.*.tmp either way
