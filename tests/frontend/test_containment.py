"""Models that kill onnx's own C++ (found by structured fuzzing of the corpus): `kiln compile` refuses them in one
line instead of dying with them (compiler/frontend/containment.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.frontend.containment import ChildDied, bounded_memory, in_child
from tests.models import ROOT, finish, save



def _compile_cli(path, tmp_path):
    return subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(path), "-o", str(tmp_path / "m.so")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_model_that_segfaults_onnx_inference_is_one_line(tmp_path):
    # GatherND with batch_dims -3 (a mutated BERT window): onnx's shape inference dereferences past its dims
    graph = helper.make_graph([helper.make_node("GatherND", ["data", "idx"], ["y"], batch_dims=-3)], "gather_nd",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 16])],
                              [numpy_helper.from_array(np.zeros((1, 1, 1, 16, 2), np.int64), "idx")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # finish() would infer it
    model.ir_version = 8
    path = tmp_path / "gather_nd.onnx"
    onnx.save(model, path)
    done = _compile_cli(path, tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: onnx's checker died on this model (SIGSEGV) instead of naming a problem: an attribute or "
        "shape outside what its op allows (a negative batch_dims, say) (fix the node's attributes, or re-export "
        "the model)"]


def test_a_model_whose_shape_arithmetic_would_fill_memory_is_one_line(tmp_path):
    # pads from a ConstantOfShape of 2**31 values (a mutated MobileNetV2 window): onnx's data propagation built
    # a 2**31-entry shape and the OOM killer ended the compile
    nodes = [helper.make_node("ConstantOfShape", ["count"], ["zeros"],
                              value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Concat", ["four", "zeros"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"])]
    graph = helper.make_graph(nodes, "huge_pads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([2**31], np.int64), "count"),
                               numpy_helper.from_array(np.zeros(4, np.int64), "four")])
    path = save(finish(graph), tmp_path, "huge_pads")
    done = _compile_cli(path, tmp_path)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "ONNX shape inference ran out of memory: the model computes a tensor too large" in done.stderr


def test_in_child_returns_values_reraises_errors_and_reports_deaths():
    assert in_child(lambda: {"a": np.arange(3)})["a"].tolist() == [0, 1, 2]
    try:
        in_child(lambda: int("x"))
        raise AssertionError("expected ValueError")
    except ValueError as err:
        assert "invalid literal" in str(err)
    try:
        in_child(lambda: __import__("os").kill(__import__("os").getpid(), 11))
        raise AssertionError("expected ChildDied")
    except ChildDied as died:
        assert died.signal_name == "SIGSEGV"


def test_bounded_memory_turns_a_runaway_allocation_into_memory_error():
    try:
        with bounded_memory(256 << 20):
            np.ones(1 << 30, np.float64)  # 8 GB
        raise AssertionError("expected MemoryError")
    except MemoryError:
        pass
    assert np.ones(1 << 20).sum() == 1 << 20  # the limit is gone after the block
