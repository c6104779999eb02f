"""Small ONNX models built with onnx.helper for the tests, and the one oracle: ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from compiler.references import onnxruntime_session
from compiler.tuning import database as tuning
from runtime.bench import outputs_match, random_inputs

ROOT = Path(__file__).resolve().parent.parent  # the repository: where subprocesses of the tests run
OPSET = 17
F32 = TensorProto.FLOAT
TUNE_TRIALS = 8  # trials of the tests' short tunes


def single_op_model(op_type: str, input_shapes: dict[str, list], output_shape: list | None = None,
                    weights: dict[str, np.ndarray] | None = None, opset: int = OPSET, **attrs) -> onnx.ModelProto:
    """A graph of one node: inputs INPUT_SHAPES (float32) then WEIGHTS as initializers, in that order."""
    weights = weights or {}
    node = helper.make_node(op_type, [*input_shapes, *weights], ["y"], name=f"{op_type.lower()}_0", **attrs)
    graph = helper.make_graph(
        [node], f"{op_type}_test",
        [helper.make_tensor_value_info(n, F32, s) for n, s in input_shapes.items()],
        [helper.make_tensor_value_info("y", F32, output_shape)] if output_shape is not None
        else [helper.make_value_info("y", helper.make_tensor_type_proto(F32, None))],
        [numpy_helper.from_array(v, n) for n, v in weights.items()],
    )
    return finish(graph, opset)


def finish(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    """Wrap GRAPH into a model of OPSET with inferred output shapes."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    for out in model.graph.output:
        found = next((v for v in inferred.graph.output if v.name == out.name), None)
        if found is not None and not out.type.tensor_type.HasField("shape"):
            out.CopyFrom(found)
    return model


def kiln(*args):
    """Run the `kiln` command line in this process (click's runner); returns its result (exit_code, output)."""
    from click.testing import CliRunner  # noqa: PLC0415

    from compiler.cli import main  # noqa: PLC0415

    return CliRunner().invoke(main, [str(a) for a in args])


def save(model: onnx.ModelProto, folder: Path, name: str = "model") -> Path:
    """Write MODEL as FOLDER/NAME.onnx and return the path."""
    path = Path(folder) / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def assert_matches_onnxruntime(model_path: Path, artifact: Path | runtime.Model, inputs: dict | None = None,
                               rtol: float = 1e-3, atol: float = 1e-4) -> dict:
    """Run ARTIFACT and ONNX Runtime on the same INPUTS (seeded random by default); assert the outputs agree."""
    model = artifact if isinstance(artifact, runtime.Model) else runtime.load(artifact)
    feeds = inputs if inputs is not None else random_inputs(model.inputs)
    ours = model.run(feeds)
    session = onnxruntime_session(str(model_path), threads=1)
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, feeds)))
    ok, error = outputs_match(ours, reference, rtol=rtol, atol=atol)
    assert ok, f"Kiln differs from ONNX Runtime: max abs error {error}"
    return ours


def compile_and_check(model: onnx.ModelProto, folder: Path, inputs: dict | None = None, **compile_args) -> Path:
    """Save MODEL, compile it for the host's best preset, and assert it matches ONNX Runtime."""
    path = save(model, folder)
    artifact = compiler.compile(path, output=Path(folder) / "model.so", **compile_args)
    assert_matches_onnxruntime(path, artifact.path, inputs)
    return artifact.path


def two_conv_model(channels: int = 16, size: int = 14):
    """conv3x3 + bias + relu twice: two kernels heavy enough to be searched."""
    rng = np.random.default_rng(11)
    weights = [helper.make_tensor(name, F32, arr.shape, arr.flatten())
               for name, arr in (("w1", rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1),
                                 ("b1", rng.standard_normal(channels).astype(np.float32)),
                                 ("w2", rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["y"])]
    graph = helper.make_graph(nodes, "two_conv",
                              [helper.make_tensor_value_info("x", F32, [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", F32, None)], weights)
    return finish(graph)


def log_records(folder: Path) -> list[str]:
    """The record lines of the tuning log in FOLDER."""
    return [line for line in (folder / tuning.RECORDS).read_text().splitlines() if line.strip()]
