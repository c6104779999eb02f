"""The engines Kiln is compared with: ONNX Runtime and OpenVINO, each opened on the ONNX model with N threads.

Both are optional packages (the `dev` and `bench` extras install them); asking for one that is missing is a
KilnError naming the package. Every reference runs {input name: array} -> {output name: array}, as Kiln does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .bench import Engine
from .errors import KilnError


def onnxruntime_session(model_path: str, threads: int):
    """An ONNX Runtime CPU session with THREADS intra-op threads and every graph optimization."""
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def _onnxruntime(model_path: str, threads: int, shapes: dict, outputs: list[str]) -> Engine:
    session = onnxruntime_session(model_path, threads)
    return Engine("onnxruntime", lambda feeds: dict(zip(outputs, session.run(outputs, feeds))), "f32")


def _openvino(precision: str | None):
    """Factory for OpenVINO's CPU plugin; PRECISION None keeps its default (bf16 on CPUs with AMX or AVX512-BF16)."""

    def open_openvino(model_path: str, threads: int, shapes: dict, outputs: list[str]) -> Engine:
        ov = _import("openvino")
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
        return Engine("openvino" if precision is None else f"openvino-{precision}", run, used)

    return open_openvino


REFERENCES: dict[str, Callable[..., Engine]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino(None),
    "openvino-f32": _openvino("f32"),
}
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-f32": "openvino"}


def check_engines(names) -> None:
    """Raise the one-line error naming every engine of NAMES that is not a known reference."""
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        raise KilnError(f"unknown engine(s) for --against: {', '.join(unknown)} (known: {', '.join(REFERENCES)}, "
                        "none)", "pass a comma-separated list of them")


def missing_package(name: str) -> str | None:
    """The package reference engine NAME needs when it is not installed here, else None."""
    try:
        _import(PACKAGES[name])
    except KilnError:
        return PACKAGES[name]
    return None


def open_reference(name: str, model_path: str, threads: int, shapes: dict[str, tuple], outputs: list[str]) \
        -> Engine:
    """Open reference engine NAME on the ONNX model at MODEL_PATH with inputs of SHAPES, returning OUTPUTS."""
    check_engines([name])
    return REFERENCES[name](model_path, threads, shapes, outputs)


def _import(package: str):
    try:
        return __import__(package)
    except ImportError as exc:
        raise KilnError(f"{package} is not installed", f"pip install {package} (or the kiln[bench] extra)") from exc
