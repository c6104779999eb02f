"""The runtime in a process: it never imports the compiler, thread pools of the size asked for (and the
caller's CPU affinity kept), calls from several threads, memory over 10,000 runs, compiling after loading."""

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.bench import random_inputs
from runtime.tvm_runtime import pool_size, usable_cpus
from tests.models import ROOT, save, single_op_model


def test_runtime_imports_no_compiler_code_and_not_the_tvm_package(artifact):
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
banned = sorted(m for m in sys.modules if m.split('.')[0] in ('compiler', 'onnx', 'xgboost', 'onnxruntime', 'tvm'))
print(json.dumps({{"banned": banned, "env": os.environ.get("TVM_USE_RUNTIME_LIB"), "shape": list(out.shape),
                  "seconds": seconds, "rss_mb": peak_rss_mb()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["banned"] == []
    assert report["env"] is None, "TVM_USE_RUNTIME_LIB must not leak to child processes"
    assert report["shape"] == [1, 48, 8, 8]
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


@pytest.mark.parametrize("threads", [1, None])
def test_calls_from_several_threads_are_correct_and_use_the_asked_pool(artifact, threads):
    model = runtime.load(artifact, threads=threads)
    rng = np.random.default_rng(11)
    batches = [random_inputs(model.inputs, seed=int(s)) for s in rng.integers(0, 1000, 16)]
    alone = [model.run(feeds) for feeds in batches]
    pools = set()

    def run(i):
        out = model.run(batches[i])
        pools.add((threading.get_ident(), pool_size()))
        return out

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, range(len(batches))))
    for mine, reference in zip(together, alone):
        for name in reference:
            np.testing.assert_array_equal(mine[name], reference[name])
    asked = threads or len(usable_cpus())  # None: one per usable CPU
    assert {size for _thread, size in pools} == {asked}  # every thread ran with the pool size asked for


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
