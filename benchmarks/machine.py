"""What a benchmark ran on: the CPU, its vector features, the library versions, and its measured fp32 peak."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import runtime

_SGEMM_PROBE = """
import json, time
import numpy as np
n = 2048
a, b = (np.random.default_rng(s).standard_normal((n, n)).astype(np.float32) for s in (0, 1))
a @ b
def timed():
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start
best = min(timed() for _ in range(7))
print(json.dumps({"gflops": 2 * n ** 3 / best / 1e9}))
"""


def describe() -> str:
    """CPU model, usable cores and vector features, as one line."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    from runtime.tvm_runtime import usable_cpus  # noqa: PLC0415

    return f"{name}, {len(usable_cpus())} cores, {', '.join(isa_features())}, {platform.system()} {platform.machine()}"


def isa_features() -> list[str]:
    """The vector and matrix extensions that matter for inference speed, as /proc/cpuinfo names them."""
    flags = runtime.artifact.host_cpu_features()
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
              "asimd", "asimddp", "sve"]
    return [f for f in wanted if f in flags] or ["baseline"]


def sgemm_peak_gflops(threads: int) -> float:
    """The fp32 peak this machine reaches with THREADS threads: numpy's BLAS (OpenBLAS) sgemm on 2048x2048
    matrices, best of 7, in a fresh process so its thread count can be set."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", _SGEMM_PROBE], capture_output=True, text=True, check=True, env=env)
    return round(json.loads(done.stdout)["gflops"], 1)


def versions() -> dict[str, str]:
    """Versions of Kiln, TVM and the reference engines that are installed."""
    found = {"kiln": runtime.__version__}
    for module in ("tvm", "onnxruntime", "openvino", "numpy"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            continue
    return found
