"""The engines Kiln is compared with: ONNX Runtime and OpenVINO, each opened on the ONNX model with N threads.

Both are optional packages (the `dev` and `bench` extras install them); asking for one that is missing is a
KilnError naming the package. Every reference runs {input name: array} -> {output name: array}, as Kiln does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import KilnError


@dataclass
class Reference:
    """An opened reference engine: RUN maps feeds to outputs by name; PRECISION is what it computes in."""

    name: str
    run: Callable[[dict], dict]
    precision: str
    open_s: float


def onnxruntime_session(model_path: str, threads: int):
    """An ONNX Runtime CPU session with THREADS intra-op threads and every graph optimization."""
    ort = _import("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def _onnxruntime(model_path: str, threads: int, shapes: dict, outputs: list[str]) -> Reference:
    session = onnxruntime_session(model_path, threads)
    return Reference("onnxruntime", lambda feeds: dict(zip(outputs, session.run(outputs, feeds))), "f32", 0.0)


def _openvino(precision: str | None):
    """Factory for OpenVINO's CPU plugin; PRECISION None keeps its default (bf16 on CPUs with AMX or AVX512-BF16)."""

    def open_openvino(model_path: str, threads: int, shapes: dict, outputs: list[str]) -> Reference:
        ov = _import("openvino", "openvino")
        core = ov.Core()
        model = core.read_model(model_path)
        model.reshape({name: list(shape) for name, shape in shapes.items()})  # static shapes, as Kiln compiles
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        ports = {name: compiled.output(name) for name in outputs}

        def run(feeds: dict) -> dict:
            results = request.infer(feeds)
            return {name: np.asarray(results[port]) for name, port in ports.items()}

        used = compiled.get_property("INFERENCE_PRECISION_HINT")
        used = used.to_string() if hasattr(used, "to_string") else str(used)
        return Reference("openvino" if precision is None else f"openvino-{precision}", run, used, 0.0)

    return open_openvino


REFERENCES: dict[str, Callable[..., Reference]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino(None),
    "openvino-f32": _openvino("f32"),
}


def open_reference(name: str, model_path: str, threads: int, shapes: dict[str, tuple], outputs: list[str]) \
        -> Reference:
    """Open reference engine NAME on the ONNX model at MODEL_PATH with inputs of SHAPES, returning OUTPUTS."""
    if name not in REFERENCES:
        raise KilnError(f"unknown engine '{name}' (known: {', '.join(REFERENCES)})",
                        "pass one or more of them to --against, comma-separated")
    started = time.perf_counter()
    reference = REFERENCES[name](model_path, threads, shapes, outputs)
    reference.open_s = round(time.perf_counter() - started, 3)
    return reference


def _import(module: str, package: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise KilnError(f"{package} is not installed", f"pip install {package} (or the kiln[bench] extra)") from exc
