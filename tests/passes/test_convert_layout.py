"""Layout conversion on what real models mix with convolutions: a transposed convolution (PP-OCR's detector head),
Dropout with its mask output, ONNX Sum (kiln.InferenceOps), and the fallback when TVM's layout rules fail."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import runtime
from compiler.passes.convert_layout import DESIRED_LAYOUTS, convert_conv_layout
from compiler.passes.relax_util import op_name
from tests.models import F32, compile_and_check, finish


def test_a_transposed_convolution_between_nhwc_convolutions_compiles_and_matches(tmp_path):
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("wt", (8, 4, 2, 2)), ("w2", (4, 4, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "wt"], ["up"], strides=[2, 2]),
             helper.make_node("Conv", ["up", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "deconv", [helper.make_tensor_value_info("x", F32, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", F32, None)], weights)
    compile_and_check(finish(graph), tmp_path)


def _conv_then(nodes: list, outputs: list[str], opset: int = 13):
    """conv(x) -> relu -> NODES, the conv output named 'r'."""
    w = numpy_helper.from_array(np.random.default_rng(5).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["r"]), *nodes], "conv_then",
                              [helper.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
                              [helper.make_value_info(o, helper.make_tensor_type_proto(F32 if o != "mask" else
                                                                                      TensorProto.BOOL, None))
                               for o in outputs], [w])
    return finish(graph, opset)


def test_dropout_with_its_mask_output_is_the_identity_and_layout_conversion_runs(tmp_path):
    model = _conv_then([helper.make_node("Dropout", ["r"], ["y", "mask"])], ["y", "mask"])
    artifact = compile_and_check(model, tmp_path)
    assert "kiln.InferenceOps" in runtime.load(artifact).manifest.passes


def test_onnx_sum_of_several_inputs_becomes_adds(tmp_path):
    model = _conv_then([helper.make_node("Sigmoid", ["r"], ["s"]), helper.make_node("Tanh", ["r"], ["t"]),
                        helper.make_node("Sum", ["r", "s", "t"], ["y"])], ["y"])
    compile_and_check(model, tmp_path)


def test_a_graph_the_layout_rules_cannot_take_keeps_its_layout_and_says_so(caplog):
    x = relax.Var("x", relax.TensorType([1, 3, 8, 8], "float32"))
    w = relax.const(np.ones((4, 3, 3, 3), np.float32))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            conv = builder.emit(relax.op.nn.conv2d(x, w, padding=[1, 1, 1, 1]))
            stacked = builder.emit(relax.op.stack([conv, conv], axis=0))  # 5-D: TVM's layout rule fails on it
            out = builder.emit_output(relax.op.sum(stacked, axis=[0], keepdims=True))
        builder.emit_func_output(out)
    mod = builder.get()
    with pytest.raises(Exception):
        relax.transform.ConvertLayout(DESIRED_LAYOUTS)(mod)
    with caplog.at_level(logging.WARNING):
        kept = convert_conv_layout(mod)
    assert "layout conversion failed" in caplog.text
    layouts = []
    relax.analysis.post_order_visit(kept["main"].body, lambda e: layouts.append(e.attrs.data_layout)
                                    if op_name(e) == "relax.nn.conv2d" else None)
    assert layouts == ["NCHW"]
