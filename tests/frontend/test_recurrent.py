"""LSTM, GRU and RNN (no converter in TVM's importer) unrolled over their time steps before import, against
ONNX Runtime: every direction, initial states, peepholes, clip, input_forget, linear_before_reset, custom
activations, sequence lengths; a symbolic sequence length is named in the unsupported-operator error."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from runtime.errors import KilnError
from tests.models import compile_and_check, finish, save

STEPS, BATCH, INPUT, HIDDEN = 5, 2, 3, 4


def recurrent_model(kind: str, direction: str = "forward", bias: bool = True, h0: bool = False,
                    states: bool = False, lengths: list[int] | None = None, steps: int | str = STEPS, **attrs):
    """One KIND node over x [steps, batch, input] with seeded weights; STATES adds LSTM's initial cell state and
    peepholes; LENGTHS a constant sequence_lens."""
    rng = np.random.default_rng(7)
    gates, dirs = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind], 2 if direction == "bidirectional" else 1

    def weight(name, shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [weight("W", (dirs, gates * HIDDEN, INPUT)), weight("R", (dirs, gates * HIDDEN, HIDDEN))]
    inputs = ["x", "W", "R", "", "", ""]
    if bias:
        inits.append(weight("B", (dirs, 2 * gates * HIDDEN), 0.1))
        inputs[3] = "B"
    if lengths is not None:
        inits.append(numpy_helper.from_array(np.array(lengths, np.int32), "lengths"))
        inputs[4] = "lengths"
    if h0:
        inits.append(weight("h0", (dirs, BATCH, HIDDEN), 1.0))
        inputs[5] = "h0"
    if states:
        inits += [weight("c0", (dirs, BATCH, HIDDEN), 1.0), weight("P", (dirs, 3 * HIDDEN), 0.3)]
        inputs += ["c0", "P"]
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["y", "y_h"] + (["y_c"] if kind == "LSTM" else [])
    node = helper.make_node(kind, inputs, outputs, hidden_size=HIDDEN, direction=direction, **attrs)
    graph = helper.make_graph([node], kind.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [steps, BATCH, INPUT])],
                              [helper.make_value_info(o, helper.make_tensor_type_proto(TensorProto.FLOAT, None))
                               for o in outputs], inits)
    return finish(graph, 14)


@pytest.mark.parametrize("kind, options", [
    ("LSTM", {}), ("GRU", {}), ("RNN", {}),
    ("LSTM", {"direction": "reverse"}),
    ("LSTM", {"direction": "bidirectional", "h0": True, "states": True}),
    ("LSTM", {"clip": 0.5, "input_forget": 1}),
    ("LSTM", {"lengths": [5, 3]}),
    ("GRU", {"direction": "bidirectional", "linear_before_reset": 1}),
    ("GRU", {"direction": "reverse", "h0": True, "lengths": [5, 5]}),
    ("RNN", {"bias": False, "direction": "bidirectional"}),
    ("RNN", {"activations": ["Relu"]}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_recurrent_nodes_match_onnxruntime(tmp_path, kind, options):
    artifact = compile_and_check(recurrent_model(kind, **options), tmp_path)
    assert artifact.is_file()


def test_a_symbolic_sequence_length_is_refused_naming_the_operator(tmp_path):
    path = save(recurrent_model("LSTM", steps="time"), tmp_path)
    with pytest.raises(KilnError, match=r"unsupported operator type\(s\): LSTM"):
        compiler.compile(path, output=tmp_path / "m.so")
    fixed = compiler.compile(path, output=tmp_path / "fixed.so", input_shapes={"x": [STEPS, BATCH, INPUT]})
    assert fixed.manifest.inputs[0].shape == [STEPS, BATCH, INPUT]
