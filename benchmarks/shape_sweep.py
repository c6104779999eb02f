"""Matmul and convolution shape sweep: single-op models of the shapes real exports have, compiled by Kiln
(untuned, x86-avx512) beside ONNX Runtime, 2 threads, batch 1; a markdown row each, a JSON file and a plot.

    python -m benchmarks.shape_sweep [--only matmul|conv] [--out DIR]

Matmuls are `[1, M, K] @ [K, N] + bias` (and sequence-first `[M, 1, K]`, as torch's nn.MultiheadAttention
projects): 197 ViT tokens, 50 / 77 text tokens, 1500 Whisper frames, 13 and 128 rows. Convolutions (+ bias +
ReLU, NCHW as exported) are the stems, 3x3 / 1x1 / strided / depthwise 3x3, 5x5 and 7x7 layers of ResNet,
MobileNet, EfficientNet and ConvNeXt, with the odd channel counts and 7x7 / 75x75 maps nothing tiles evenly.
Each row: Kiln ms, ONNX Runtime ms and their ratio (whole single-op models through each engine's Python API; the
median of five rounds that alternate the engines, see measure); Kiln's compute alone (its kernels timed one by one,
without the transposes a single-op NCHW model gets at its border and Python's per-call costs) and its ratio to ONNX
Runtime's whole run (which keeps ONNX Runtime's own reorders: the ratio favours ONNX Runtime; its profiler's node
times were no help, they exceed its wall time on small ops); and the 1-minute load average. Writes
DIR/shape_sweep.json and DIR/shape_sweep.png (DIR: benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from compiler.references import onnxruntime_session
from runtime.atomic import atomic_write
from runtime.bench import SETTLE_S

HERE = Path(__file__).resolve().parent
# (rows, depth, cols, sequence-first)
MATMULS = [(1, 768, 768, False), (13, 768, 768, False), (50, 768, 768, False), (77, 768, 768, False),
           (128, 768, 3072, False), (197, 768, 768, False), (197, 768, 2304, False), (197, 768, 3072, False),
           (197, 3072, 768, False), (1500, 384, 384, False), (1500, 384, 1536, False), (197, 768, 2304, True),
           (77, 512, 1536, True)]
# (in channels, out channels, map size, kernel, stride, groups): groups == in channels is depthwise
CONVS = [(3, 64, 224, 7, 2, 1), (3, 32, 224, 3, 2, 1),  # ResNet's and MobileNet's stems
         (64, 64, 56, 3, 1, 1), (128, 128, 28, 3, 1, 1), (256, 256, 14, 3, 1, 1), (512, 512, 7, 3, 1, 1),
         (128, 128, 56, 3, 2, 1), (256, 256, 28, 3, 2, 1),  # ResNet v1.5's strided 3x3
         (256, 64, 56, 1, 1, 1), (1024, 256, 14, 1, 1, 1), (24, 144, 56, 1, 1, 1), (40, 240, 28, 1, 1, 1),
         (144, 144, 56, 3, 1, 144), (240, 240, 28, 5, 1, 240), (672, 672, 14, 5, 2, 672),  # depthwise 3x3 / 5x5
         (96, 96, 56, 7, 1, 96), (768, 768, 7, 7, 1, 768),  # ConvNeXt's depthwise 7x7
         (32, 32, 75, 3, 1, 1), (3, 24, 48, 3, 1, 1)]  # an odd map; a 3-channel input of PP-OCR's size


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
    return _finish(graph), x_shape


def conv_model(channels: int, outs: int, size: int, kernel: int, stride: int, groups: int) \
        -> tuple[onnx.ModelProto, list[int]]:
    """conv (same padding) + bias + ReLU with seeded weights, and x's shape."""
    rng = np.random.default_rng(0)
    pad = kernel // 2
    out_size = (size + 2 * pad - kernel) // stride + 1
    x_shape = [1, channels, size, size]
    weight = rng.standard_normal((outs, channels // groups, kernel, kernel)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["t"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                          pads=[pad] * 4, group=groups), helper.make_node("Relu", ["t"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outs, out_size, out_size])],
        [numpy_helper.from_array(weight * np.float32(np.sqrt(2 / weight[0].size)), "w"),
         numpy_helper.from_array(rng.standard_normal(outs).astype(np.float32) * 0.1, "b")])
    return _finish(graph), x_shape


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def median_ms(run, count: int) -> float:
    """Median milliseconds of COUNT calls of RUN after one warm-up call, once the other engine's worker threads
    have stopped spinning (runtime.bench.SETTLE_S): without that pause a block of sub-0.1 ms runs fell wholly
    inside the spin of the engine timed before it, and the sweep's small points went bimodal (a 1-row matmul
    0.025 or 0.087 ms in three rounds of one process)."""
    time.sleep(SETTLE_S)
    run()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def kiln_compute_ms(kiln) -> float:
    """Kiln's kernels timed one by one (runtime.profile), the transpose kernels at the model's border (`transpose`,
    `transpose1`, ...) left out; a transpose fused into the convolution (kiln.FuseInputTransposes) is counted."""
    from runtime.profile import profile_kernels  # noqa: PLC0415

    return sum(t.ms_per_run for t in profile_kernels(kiln, repeat=20) if not re.fullmatch(r"transpose\d*", t.kernel))


def measure(model: onnx.ModelProto, x_shape: list[int], folder: Path, rounds: int = 5) -> dict:
    """Kiln's and ONNX Runtime's median ms on MODEL, and Kiln's compute alone, in ROUNDS rounds that alternate
    the three (each enough runs for about 0.3 s); each figure and each ratio is the median over the rounds of the
    ratios taken within a round, so a slow spell of this shared machine (both engines 2.5x slower for a minute was
    seen) moves a round, not a ratio."""
    path = folder / "case.onnx"
    onnx.save(model, path)
    artifact = compiler.compile(path, target="x86-avx512", output=folder / "case.so", tuning_log="none")
    kiln, session = runtime.load(artifact.path, threads=2), onnxruntime_session(str(path), threads=2)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    count = max(10, min(2000, int(300 / max(median_ms(lambda: session.run(None, {"x": x}), 3), 0.01))))
    load = float(Path("/proc/loadavg").read_text().split()[0])
    timed = []
    for _ in range(rounds):
        ours = median_ms(lambda: kiln.run({"x": x}), count)
        theirs = median_ms(lambda: session.run(None, {"x": x}), count)
        time.sleep(SETTLE_S)
        timed.append((ours, theirs, kiln_compute_ms(kiln)))
    ours, theirs, compute = (float(np.median([t[i] for t in timed])) for i in range(3))
    return {"kiln_ms": round(ours, 4), "onnxruntime_ms": round(theirs, 4), "kiln_compute_ms": round(compute, 4),
            "ratio": round(float(np.median([o / t for o, t, _ in timed])), 3),
            "compute_ratio": round(float(np.median([c / t for _, t, c in timed])), 3), "load": load}


def matmul_case(rows: int, depth: int, cols: int, sequence_first: bool) -> tuple[str, onnx.ModelProto, list[int]]:
    shape = f"[{rows}, 1, {depth}]" if sequence_first else f"[1, {rows}, {depth}]"
    return (f"{shape} @ [{depth}, {cols}]", *linear_model(rows, depth, cols, sequence_first))


def conv_case(channels: int, outs: int, size: int, kernel: int, stride: int, groups: int) \
        -> tuple[str, onnx.ModelProto, list[int]]:
    kind = "depthwise " if groups == channels and groups > 1 else ""
    label = f"{kind}{kernel}x{kernel}/{stride} {channels}->{outs} @ {size}x{size}"
    return (label, *conv_model(channels, outs, size, kernel, stride, groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["matmul", "conv"])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    cases = ([("matmul", matmul_case(*s)) for s in MATMULS] if args.only != "conv" else []) + \
        ([("conv", conv_case(*s)) for s in CONVS] if args.only != "matmul" else [])
    print("| kind | shape | Kiln ms | ONNX Runtime ms | ratio | Kiln compute ms | compute ratio | load avg |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    points = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, (label, model, x_shape) in cases:
            point = {"kind": kind, "shape": label, **measure(model, x_shape, Path(folder))}
            points.append(point)
            print(f"| {kind} | {label} | {point['kiln_ms']:.3f} | {point['onnxruntime_ms']:.3f} | "
                  f"{point['ratio']:.2f}x | {point['kiln_compute_ms']:.3f} | {point['compute_ratio']:.2f}x | "
                  f"{point['load']:.2f} |", flush=True)
    from . import machine  # noqa: PLC0415
    from .plots import shape_sweep_plot  # noqa: PLC0415 - matplotlib is optional

    sweep = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine.describe(),
             "threads": 2, "points": points}
    atomic_write(args.out / "shape_sweep.json", json.dumps(sweep, indent=2))
    plot = shape_sweep_plot(sweep, args.out / "shape_sweep.png")
    print(f"wrote {args.out / 'shape_sweep.json'}" + (f" and {plot}" if plot else ""))


if __name__ == "__main__":
    main()
