"""Matmul shape sweep: `[1, M, K] @ [K, N] + bias` (and sequence-first `[M, 1, K]`, as torch's
nn.MultiheadAttention projects) compiled by Kiln (untuned, x86-avx512) beside ONNX Runtime, 2 threads, batch 1.

    python -m benchmarks.matmul_sweep

Prints one markdown row a shape: Kiln ms, ONNX Runtime ms, their ratio (the median of three rounds that
alternate the engines) and the 1-minute load average. The shapes are the ones real exports have: 197 ViT
tokens, 50 / 77 text tokens, 1500 Whisper frames, 13 rows (no register tile divides them).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from compiler.references import onnxruntime_session

SHAPES = [(1, 768, 768, False), (13, 768, 768, False), (50, 768, 768, False), (77, 768, 768, False),
          (197, 768, 768, False), (197, 768, 2304, False), (197, 768, 3072, False), (197, 3072, 768, False),
          (1500, 384, 384, False), (1500, 384, 1536, False), (197, 768, 2304, True), (77, 512, 1536, True)]


def linear_model(rows: int, depth: int, cols: int, sequence_first: bool) -> tuple[onnx.ModelProto, list[int]]:
    """x @ W + b with seeded weights, and x's shape."""
    rng = np.random.default_rng(0)
    x_shape = [rows, 1, depth] if sequence_first else [1, rows, depth]
    y_shape = [*x_shape[:-1], cols]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(rng.standard_normal((depth, cols)).astype(np.float32) * 0.05, "w"),
         numpy_helper.from_array(rng.standard_normal(cols).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, x_shape


def median_ms(run, count: int) -> float:
    """Median milliseconds of COUNT calls of RUN after one warm-up call."""
    run()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def sweep_row(rows: int, depth: int, cols: int, sequence_first: bool, folder: Path) -> str:
    """The markdown row of one shape."""
    model, x_shape = linear_model(rows, depth, cols, sequence_first)
    path = folder / "linear.onnx"
    onnx.save(model, path)
    artifact = compiler.compile(path, target="x86-avx512", output=folder / "linear.so", tuning_log="none")
    kiln, session = runtime.load(artifact.path, threads=2), onnxruntime_session(str(path), threads=2)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    count = 30 if rows * depth * cols < 2e8 else 15
    load = Path("/proc/loadavg").read_text().split()[0]
    rounds = sorted((k / o, k, o) for k, o in ((median_ms(lambda: kiln.run({"x": x}), count),
                                                median_ms(lambda: session.run(None, {"x": x}), count))
                                               for _ in range(3)))
    ratio, ours, theirs = rounds[1]
    shape = f"[{rows}, 1, {depth}]" if sequence_first else f"[1, {rows}, {depth}]"
    return f"| {shape} @ [{depth}, {cols}] | {ours:.3f} | {theirs:.3f} | {ratio:.2f}x | {load} |"


def main() -> None:
    print("| shape | Kiln ms | ONNX Runtime ms | ratio | load avg |\n| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for shape in SHAPES:
            print(sweep_row(*shape, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
