"""The engines Kiln is compared with: ONNX Runtime and OpenVINO, each opened on the ONNX model with N threads.

Both are optional packages (the `dev` and `bench` extras install them); asking for one that is missing is a
KilnError naming the package. Every reference runs {input name: array} -> {output name: array}, as Kiln does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.bench import Engine
from runtime.errors import KilnError
from runtime.scratch import scratch_dir


def onnxruntime_session(model_path: str, threads: int):
    """An ONNX Runtime CPU session with THREADS intra-op threads and every graph optimization."""
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def _session_engine(name: str, model_path: str, threads: int, outputs: list[str], precision: str) -> Engine:
    """An ONNX Runtime session on MODEL_PATH as the engine NAME."""
    session = onnxruntime_session(model_path, threads)
    return Engine(name, lambda feeds: dict(zip(outputs, session.run(outputs, feeds))), precision)


def _onnxruntime(model_path: str, threads: int, shapes: dict, outputs: list[str]) -> Engine:
    return _session_engine("onnxruntime", model_path, threads, outputs, "f32")


CALIBRATION_SAMPLES = 16  # seeded random inputs: the distribution the benchmark models are fed


def _onnxruntime_int8(model_path: str, threads: int, shapes: dict, outputs: list[str]) -> Engine:
    """ONNX Runtime on the model quantized by its own tool: static, QDQ, per-channel int8 weights, uint8
    activations, calibrated on seeded random inputs of SHAPES in the model's input dtypes (written beside the
    model as NAME.qdq.onnx)."""
    _import("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    import onnx  # noqa: PLC0415

    from runtime.artifact import TensorSpec  # noqa: PLC0415
    from runtime.bench import random_inputs  # noqa: PLC0415

    # each input in its own dtype: token ids and masks are integers (random_inputs keeps ids small)
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
              for i in onnx.load(model_path, load_external_data=False).graph.input}
    specs = [TensorSpec(name, dtypes.get(name, "float32"), list(shape)) for name, shape in shapes.items()]

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.left = iter([random_inputs(specs, seed=seed) for seed in range(CALIBRATION_SAMPLES)])

        def get_next(self):
            return next(self.left, None)

    quantized = Path(model_path).with_suffix(".qdq.onnx")
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # the tool warns on the root logger for each 1-D weight it skips
    try:
        with scratch_dir("kiln-ort-int8-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(model_path, str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), Samples(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return _session_engine("onnxruntime-int8", str(quantized), threads, outputs, "int8")


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
    "onnxruntime-int8": _onnxruntime_int8,
    "openvino": _openvino(None),
    "openvino-f32": _openvino("f32"),
}
PACKAGES = {"onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime", "openvino": "openvino",
            "openvino-f32": "openvino"}
PREPARED = {"onnxruntime-int8"}  # engines that first transform the model (no fresh-process start-up figure)


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
