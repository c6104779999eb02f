"""Matmul and convolution shape sweep: single-op models of the shapes real exports have, compiled by Kiln
(untuned, x86-avx512) beside ONNX Runtime, 2 threads, batch 1; a markdown row each, a JSON file and a plot.

    python -m benchmarks.shape_sweep [--only matmul|conv] [--out DIR]

Matmuls are `[1, M, K] @ [K, N] + bias` (and sequence-first `[M, 1, K]`, as torch's nn.MultiheadAttention
projects): 197 ViT tokens, 50 / 77 text tokens, 1500 Whisper frames, 13 and 128 rows. Convolutions (+ bias +
ReLU, NCHW as exported) are the stems, 3x3 / 1x1 / strided / depthwise 3x3, 5x5 and 7x7 layers of ResNet,
MobileNet, EfficientNet and ConvNeXt, with the odd channel counts and 7x7 / 75x75 maps nothing tiles evenly.
Each row: Kiln ms, ONNX Runtime ms and their ratio (the median of three rounds that alternate the engines, whole
single-op models through each engine's Python API), the same for the compute alone (each engine's layout changes at
the model's border left out: see kernel_ms), and the 1-minute load average. Writes DIR/shape_sweep.json and DIR/shape_sweep.png (DIR: benchmarks/).
"""

from __future__ import annotations

import argparse
import json
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
    """Median milliseconds of COUNT calls of RUN after one warm-up call."""
    run()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


LAYOUT_OPS = ("ReorderInput", "ReorderOutput", "Transpose")  # ONNX Runtime's layout changes (NCHWc) and Kiln's


def kernel_ms(kiln, session_path: str, x: np.ndarray) -> tuple[float, float]:
    """The compute alone, each engine's layout changes left out: Kiln's kernels timed one by one (runtime.profile)
    but its transposes, and ONNX Runtime's nodes from its profiler but its reorders and transposes (the median
    run of 20). At a model's border both engines change layout once; inside a model neither does, so this is what
    a convolution costs there."""
    import onnxruntime as ort  # noqa: PLC0415

    from runtime.profile import profile_kernels  # noqa: PLC0415

    ours = sum(t.ms_per_run for t in profile_kernels(kiln, repeat=20) if not t.kernel.startswith("transpose"))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = 2, True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "kiln-sweep-ort")
    session = ort.InferenceSession(session_path, options, providers=["CPUExecutionProvider"])
    for _ in range(25):
        session.run(None, {"x": x})
    profile = Path(session.end_profiling())
    runs, current = [], 0.0
    for event in json.loads(profile.read_text()):  # a run's node events come before its model_run event
        if event.get("cat") == "Session" and event["name"] == "model_run":
            runs.append(current)
            current = 0.0
        elif event.get("cat") == "Node" and event["name"].endswith("_kernel_time") \
                and event["args"].get("op_name") not in LAYOUT_OPS:
            current += event["dur"] / 1e3
    profile.unlink()
    theirs = float(np.median(runs[5:]))  # the first runs warm up
    return ours, theirs


def measure(model: onnx.ModelProto, x_shape: list[int], folder: Path) -> dict:
    """Kiln's and ONNX Runtime's median ms on MODEL and their ratio (the median round of three that alternate the
    engines, each round enough runs for about 0.3 s), and the same for the compute alone (kernel_ms)."""
    path = folder / "case.onnx"
    onnx.save(model, path)
    artifact = compiler.compile(path, target="x86-avx512", output=folder / "case.so", tuning_log="none")
    kiln, session = runtime.load(artifact.path, threads=2), onnxruntime_session(str(path), threads=2)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    count = max(10, min(60, int(300 / max(median_ms(lambda: session.run(None, {"x": x}), 3), 0.01))))
    load = float(Path("/proc/loadavg").read_text().split()[0])
    rounds = sorted((k / o, k, o) for k, o in ((median_ms(lambda: kiln.run({"x": x}), count),
                                                median_ms(lambda: session.run(None, {"x": x}), count))
                                               for _ in range(3)))
    ratio, ours, theirs = rounds[1]
    ours_compute, theirs_compute = kernel_ms(kiln, str(path), x)
    return {"kiln_ms": round(ours, 4), "onnxruntime_ms": round(theirs, 4), "ratio": round(ratio, 3),
            "kiln_compute_ms": round(ours_compute, 4), "onnxruntime_compute_ms": round(theirs_compute, 4),
            "compute_ratio": round(ours_compute / theirs_compute, 3), "load": load}


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
    print("| kind | shape | Kiln ms | ONNX Runtime ms | ratio | Kiln compute ms | ONNX Runtime compute ms | "
          "compute ratio | load avg |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    points = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, (label, model, x_shape) in cases:
            point = {"kind": kind, "shape": label, **measure(model, x_shape, Path(folder))}
            points.append(point)
            print(f"| {kind} | {label} | {point['kiln_ms']:.3f} | {point['onnxruntime_ms']:.3f} | "
                  f"{point['ratio']:.2f}x | {point['kiln_compute_ms']:.3f} | {point['onnxruntime_compute_ms']:.3f} | "
                  f"{point['compute_ratio']:.2f}x | {point['load']:.2f} |", flush=True)
    from . import machine  # noqa: PLC0415
    from .plots import shape_sweep_plot  # noqa: PLC0415 - matplotlib is optional

    sweep = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine.describe(),
             "threads": 2, "points": points}
    atomic_write(args.out / "shape_sweep.json", json.dumps(sweep, indent=2))
    plot = shape_sweep_plot(sweep, args.out / "shape_sweep.png")
    print(f"wrote {args.out / 'shape_sweep.json'}" + (f" and {plot}" if plot else ""))


if __name__ == "__main__":
    main()
