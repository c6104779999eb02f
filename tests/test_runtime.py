"""The thin runtime: loads and checks artifacts, checks inputs, and never imports the compiler."""

import json
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import compiler
import runtime
from runtime.artifact import split_artifact, write_artifact
from runtime.bench import random_inputs
from runtime.errors import KilnError
from runtime.tvm_runtime import tvm_runtime, usable_cpus
from tests.models import F32, assert_matches_onnxruntime, finish, save, single_op_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rt")
    w = np.random.default_rng(4).standard_normal((4, 3, 3, 3)).astype(np.float32)
    path = save(single_op_model("Conv", {"x": ["batch", 3, 8, 8]}, weights={"w": w}, pads=[1, 1, 1, 1]), folder)
    return compiler.compile(path, output=folder / "conv.so").path


def test_manifest_fields(artifact):
    m = runtime.read_manifest(artifact)
    assert m.inputs[0].name == "x" and m.inputs[0].shape == ["batch", 3, 8, 8] and m.inputs[0].dtype == "float32"
    assert m.outputs[0].name == "y" and m.outputs[0].shape == ["batch", 4, 8, 8]
    assert m.source_model == "model.onnx" and len(m.source_sha256) == 64 and len(m.library_sha256) == 64
    assert m.target and m.tvm_target["kind"] == "llvm" and m.arch == "x86_64"
    assert "kiln.FoldBatchNorm" in m.passes and m.tvm_version.startswith("0.27")
    assert set(m.tuning) == {"database", "records", "tasks_tuned", "tasks_default"}
    assert m.format_version == 1 and m.quantization is None


def test_run_and_call_agree(artifact):
    model = runtime.load(artifact, threads=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    by_name = model.run({"x": x})["y"]
    assert by_name.shape == (2, 4, 8, 8)
    np.testing.assert_array_equal(model(x), by_name)
    assert [s.name for s in model.inputs] == ["x"] and [s.name for s in model.outputs] == ["y"]


def test_copied_inputs_go_through_one_reused_tensor_per_input_and_results_stay_right(artifact):
    """An input the kernels cannot read in place (here: read-only, which DLPack cannot flag) is copied into a device
    tensor kept while the shape stays (a fresh one per call cost 5% on MobileNetV2); new values and a new batch
    size must still give each call its own result."""
    model = runtime.load(artifact, threads=1)
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((b, 3, 8, 8)).astype(np.float32) for b in (2, 2, 3, 2)]
    for x in inputs:
        x.flags.writeable = False
    outputs = [model(x) for x in inputs]
    staged = model._staging[0]
    model(inputs[0])
    assert model._staging[0] is staged  # same shape: the same tensor again
    assert not np.array_equal(outputs[0], outputs[1])
    fresh = runtime.load(artifact, threads=1)
    for x, y in zip(inputs, outputs):
        np.testing.assert_array_equal(fresh(x), y)  # each call computed on its own input, not a stale copy
    np.testing.assert_array_equal(fresh(inputs[0].copy()), outputs[0])  # and read in place, the same result


def _at_offset(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of X whose data starts OFFSET bytes past a 64-byte boundary."""
    raw = np.empty(x.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    view = raw[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    view[...] = x
    return view


def _square_plus_model(tmp_path, extra_output: bool = False) -> Path:
    """y = relu(x * x + c) on a 4x1024 x (LLVM keeps x in a register: an aligned load unless told otherwise);
    EXTRA_OUTPUT adds z = reshape(x), an output that is a view of the input."""
    c = helper.make_tensor("c", F32, [1024], np.linspace(-1, 1, 1024, dtype=np.float32))
    nodes = [helper.make_node("Mul", ["x", "x"], ["s"]), helper.make_node("Add", ["s", "c"], ["t"]),
             helper.make_node("Relu", ["t"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", F32, [4, 1024])]
    inits = [c]
    if extra_output:
        shape = helper.make_tensor("shape", helper.TensorProto.INT64, [2], [8, 512])
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", F32, [8, 512]))
        inits.append(shape)
    graph = helper.make_graph(nodes, "square_plus", [helper.make_tensor_value_info("x", F32, [4, 1024])], outputs,
                              inits)
    return save(finish(graph), tmp_path)


def test_inputs_are_read_where_the_caller_keeps_them(tmp_path):
    """kiln.ReadInputsInPlace declares the buffers through which kernels read a model input aligned to their
    element size, so the runtime hands the kernels the caller's array, even 4 bytes past a 64-byte boundary.
    (Without the pass LLVM loads x with vmovaps, which faults on such an address.)"""
    path = _square_plus_model(tmp_path)
    built = compiler.compile(path, output=tmp_path / "sq.so")
    assert built.manifest.input_alignment == 4 and "kiln.ReadInputsInPlace" in built.manifest.passes
    model = runtime.load(built.path)
    x = _at_offset(np.random.default_rng(6).standard_normal((4, 1024)).astype(np.float32), 4)
    assert x.ctypes.data % 64 == 4
    assert_matches_onnxruntime(path, model, {"x": x})
    assert not model._staging  # nothing was copied


def test_inputs_with_strides_the_kernels_refuse_are_copied(artifact):
    """numpy calls a transposed column C-contiguous (strides (4, 4) for shape 1x3) and gives an empty array zero
    strides; TVM's kernels check an argument's strides against the compact ones, so such inputs are copied."""
    model = runtime.load(artifact, threads=1)
    x = np.random.default_rng(8).standard_normal((3 * 8 * 8, 1)).astype(np.float32).T.reshape(1, 3, 8, 8)
    odd = np.lib.stride_tricks.as_strided(x, strides=(4,) + x.strides[1:])
    assert odd.flags.c_contiguous and odd.strides != x.strides
    np.testing.assert_array_equal(model(odd), model(x.copy()))
    assert model(np.zeros((0, 3, 8, 8), np.float32)).shape == (0, 4, 8, 8)


def test_an_input_that_is_also_an_output_is_copied(tmp_path):
    """A view of the input returned as an output would hand the caller's memory back: the pass leaves the
    kernels 64-byte aligned and the runtime copies the input."""
    path = _square_plus_model(tmp_path, extra_output=True)
    built = compiler.compile(path, output=tmp_path / "sqz.so")
    assert built.manifest.input_alignment == 64
    model = runtime.load(built.path)
    x = _at_offset(np.random.default_rng(7).standard_normal((4, 1024)).astype(np.float32), 4)
    out = assert_matches_onnxruntime(path, model, {"x": x})
    assert model._staging and not np.shares_memory(out["z"], x)


@pytest.mark.parametrize("feeds, expected", [
    ({"x": np.zeros((1, 3, 8, 9), np.float32)}, "input 'x' has shape 1x3x8x9, expected batchx3x8x8"),
    ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "input 'x' has dtype float64, expected float32"),
    ({"z": np.zeros((1, 3, 8, 8), np.float32)}, "missing ['x'], unknown ['z']"),
])
def test_bad_inputs_name_what_is_expected(artifact, feeds, expected):
    model = runtime.load(artifact)
    with pytest.raises(KilnError) as info:
        model.run(feeds)
    assert expected in str(info.value)
    assert "x: float32[batchx3x8x8]" in str(info.value) or "expected" in str(info.value)


def test_wrong_number_of_positional_inputs(artifact):
    with pytest.raises(KilnError, match="takes 1 input"):
        runtime.load(artifact)()


def _rewrite(artifact, tmp_path, edit_library=None, edit_manifest=None) -> Path:
    library, manifest = split_artifact(artifact)
    library = bytearray(library)
    if edit_library:
        edit_library(library)
    if edit_manifest:
        edit_manifest(manifest)
    (tmp_path / "lib.so").write_bytes(bytes(library))
    return write_artifact(tmp_path / "lib.so", manifest, tmp_path / "edited.so")


def test_tampered_library_is_refused(artifact, tmp_path):
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    bad = tmp_path / "tampered.so"
    bad.write_bytes(bytes(blob))
    with pytest.raises(KilnError, match="does not match the sha256"):
        runtime.load(bad)


def test_other_architecture_is_refused(artifact, tmp_path):
    other = _rewrite(artifact, tmp_path, edit_library=lambda lib: struct.pack_into("<H", lib, 18, 0xB7))
    with pytest.raises(KilnError, match=r"built for aarch64 \(target .*\), this host is x86_64"):
        runtime.load(other)


def test_missing_cpu_features_are_refused(artifact, tmp_path):
    other = _rewrite(artifact, tmp_path, edit_manifest=lambda m: m.cpu_features.append("avx_from_the_future"))
    with pytest.raises(KilnError, match="needs CPU features this machine lacks: avx_from_the_future"):
        runtime.load(other)


def test_not_an_artifact(tmp_path):
    plain = tmp_path / "plain.so"
    plain.write_bytes(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(KilnError, match="is not a Kiln artifact"):
        runtime.load(plain)


def test_multiple_outputs(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", F32, [2, 5])],
                              [helper.make_tensor_value_info("a", F32, [2, 5]),
                               helper.make_tensor_value_info("b", F32, [2, 5])])
    path = save(finish(graph), tmp_path)
    model = runtime.load(compiler.compile(path, output=tmp_path / "two.so").path)
    out = assert_matches_onnxruntime(path, model)
    assert list(out) == ["a", "b"]
    a, b = model(np.ones((2, 5), np.float32))
    assert a.shape == b.shape == (2, 5)


def test_runtime_imports_no_compiler_code(artifact):
    probe = f"""
import json, os, sys, time


def peak_rss_mb():  # VmHWM, not ru_maxrss: the latter keeps the parent's peak across exec
    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))
    return int(line.split()[1]) / 1024


start = time.perf_counter()
import numpy as np, runtime
model = runtime.load({str(artifact)!r})
out = model(np.ones((1, 3, 8, 8), np.float32))
seconds = time.perf_counter() - start
banned = sorted(m for m in sys.modules if m.split('.')[0] in ('compiler', 'onnx', 'xgboost', 'onnxruntime')
                or m.startswith(('tvm.relax', 'tvm.s_tir', 'tvm.topi', 'tvm.contrib')))
print(json.dumps({{"banned": banned, "env": os.environ.get("TVM_USE_RUNTIME_LIB"), "shape": list(out.shape),
                  "seconds": seconds, "rss_mb": peak_rss_mb()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["banned"] == []
    assert report["env"] is None, "TVM_USE_RUNTIME_LIB must not leak to child processes"
    assert report["shape"] == [1, 4, 8, 8]
    print(f"runtime import+load+first run: {report['seconds']:.2f} s, peak RSS {report['rss_mb']:.0f} MB")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")
def test_setting_threads_keeps_the_callers_cpu_affinity(artifact):
    before = os.sched_getaffinity(0)
    model = runtime.load(artifact, threads=2)
    model(np.ones((1, 3, 8, 8), np.float32))
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_pool_size_is_what_was_asked(artifact, threads):
    from runtime.tvm_runtime import set_num_threads

    runtime.load(artifact, threads=threads)
    assert set_num_threads(threads) == threads


def test_a_model_rebuilt_in_place_loads_its_new_code(tmp_path):
    """dlopen() returns the library it already has for a path: reloading a rebuilt artifact must not."""
    from tests.models import single_op_model

    out = tmp_path / "same.so"
    for scale in (2.0, 3.0):
        weights = {"s": np.array([scale], np.float32)}
        path = save(single_op_model("Mul", {"x": [4]}, [4], weights), tmp_path, f"mul{scale}")
        compiler.compile(path, output=out, tuning_log="none")
        result = runtime.load(out).run({"x": np.ones(4, np.float32)})
        np.testing.assert_allclose(next(iter(result.values())), np.full(4, scale))


@pytest.mark.parametrize("threads", [1, None])
def test_calls_from_several_threads_are_correct_and_use_the_asked_pool(artifact, threads):
    model = runtime.load(artifact, threads=threads)
    rng = np.random.default_rng(11)
    batches = [random_inputs(model.inputs, seed=int(s)) for s in rng.integers(0, 1000, 16)]
    alone = [model.run(feeds) for feeds in batches]
    pools = set()

    def run(i):
        out = model.run(batches[i])
        pools.add((threading.get_ident(), int(tvm_runtime().get_global_func("runtime.NumThreads")())))
        return out

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, range(len(batches))))
    for mine, reference in zip(together, alone):
        for name in reference:
            np.testing.assert_array_equal(mine[name], reference[name])
    asked = threads or len(usable_cpus())  # None: one per usable CPU
    assert {size for _thread, size in pools} == {asked}  # every thread ran with the pool size asked for


def test_truncated_artifact_is_refused(artifact, tmp_path):
    cut = tmp_path / "cut.so"
    cut.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    with pytest.raises(KilnError, match="is not a Kiln artifact"):
        runtime.load(cut)


def test_newer_format_version_is_refused(artifact, tmp_path):
    newer = _rewrite(artifact, tmp_path, edit_manifest=lambda m: setattr(m, "format_version", 99))
    with pytest.raises(KilnError, match="has artifact format 99; this Kiln runtime reads format 1 and older"):
        runtime.load(newer)


def test_manifest_that_does_not_match_the_library_is_refused(artifact, tmp_path):
    def add_input(manifest):
        manifest.inputs.append(runtime.artifact.TensorSpec("extra", "float32", [1]))

    edited = _rewrite(artifact, tmp_path, edit_manifest=add_input)
    with pytest.raises(KilnError, match=r"the manifest lists 2 input\(s\) but the library's main takes 1"):
        runtime.load(edited)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_ten_thousand_runs_do_not_grow_memory(artifact):
    model = runtime.load(artifact, threads=1)
    feeds = random_inputs(model.inputs, {"batch": 2})
    for _ in range(1000):  # warm: pools, allocator caches
        model.run(feeds)
    before = _rss_mb()
    for _ in range(10_000):
        model.run(feeds)
    grown = _rss_mb() - before
    assert grown < 4.0, f"resident memory grew {grown:.1f} MB over 10,000 runs"


def test_a_script_may_load_a_model_and_then_compile_one(artifact, tmp_path):
    # `import compiler` is cheap now (compile loads the compiler on first use); TVM is imported once per process,
    # so the runtime must not pick the runtime-only library in a process that will compile.
    model = save(single_op_model("Relu", {"x": [1, 4]}, [1, 4]), tmp_path)
    script = (f"import compiler, runtime\nruntime.load({str(artifact)!r})\n"
              f"print(compiler.compile({str(model)!r}, output={str(tmp_path / 'relu.so')!r}).path)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("relu.so")
