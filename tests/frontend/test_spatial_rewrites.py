"""Resize and ConvTranspose forms TVM's converters do not take (spatial_rewrites.py), and NonMaxSuppression
operands TVM would silently default: each compiled and checked against ONNX Runtime, or refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from compiler.frontend import load_model
from runtime.errors import KilnError
from tests.models import F32, assert_matches_onnxruntime, compile_and_check, finish, save


def _resize(x_shape, attrs, scales=None, sizes=None, opset=19):
    inits = [numpy_helper.from_array(np.array([], np.float32), "roi")]
    names = ["x", "roi"]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        names.append("scales")
    else:
        names.append("")
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        names.append("sizes")
    node = helper.make_node("Resize", names, ["y"], **attrs)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", F32, x_shape)],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    return finish(graph, opset)


@pytest.mark.parametrize("attrs, scales, sizes", [
    ({"mode": "nearest", "axes": [3, 2]}, [3.0, 2.0], None),  # scales for two axes, in reverse order
    ({"mode": "linear", "axes": [2, 3]}, None, [6, 12]),
    ({"mode": "nearest", "keep_aspect_ratio_policy": "not_smaller", "axes": [2, 3]}, None, [8, 9]),  # scale 2
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, [1.0, 1.0, 2.0, 1.5], None),
], ids=["axes-scales", "axes-sizes", "not-smaller", "half-pixel-symmetric"])
def test_resize_forms_become_ones_tvm_takes(attrs, scales, sizes, tmp_path):
    model = _resize([1, 3, 4, 6], attrs, scales, sizes)
    node = next(n for n in load_model(save(model, tmp_path, "probe")).proto.graph.node if n.op_type == "Resize")
    kept = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert "axes" not in kept and "keep_aspect_ratio_policy" not in kept
    assert kept.get("coordinate_transformation_mode", b"half_pixel") != b"half_pixel_symmetric"
    compile_and_check(model, tmp_path)


def test_an_inexact_resize_form_is_left_as_it_is(tmp_path):
    # 0.6 x 4 rows is 2.4: half_pixel_symmetric differs from half_pixel here, so the node keeps its mode
    model = _resize([1, 1, 4, 4], {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
                    [1.0, 1.0, 0.6, 0.6])
    node = next(n for n in load_model(save(model, tmp_path)).proto.graph.node if n.op_type == "Resize")
    assert any(a.name == "coordinate_transformation_mode" and a.s == b"half_pixel_symmetric" for a in node.attribute)


@pytest.mark.parametrize("auto_pad, output_shape", [("NOTSET", [10, 8]), ("SAME_UPPER", [6, 6]),
                                                    ("NOTSET", [7, 5])])
def test_conv_transpose_output_shape_becomes_pads(auto_pad, output_shape, tmp_path):
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2], output_shape=output_shape,
                            auto_pad=auto_pad)
    graph = helper.make_graph([node], "deconv", [helper.make_tensor_value_info("x", F32, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", F32, None)], [weight])
    model = finish(graph, 17)
    compile_and_check(model, tmp_path)


def test_nms_with_run_time_limits_is_refused_not_defaulted(tmp_path):
    # TVM's converter reads a max_output_boxes_per_class it cannot see as 0 (no boxes): Kiln refuses instead
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "limit", "iou"], ["selected"])
    graph = helper.make_graph([node], "nms", [helper.make_tensor_value_info("boxes", F32, [1, 6, 4]),
                                              helper.make_tensor_value_info("scores", F32, [1, 1, 6]),
                                              helper.make_tensor_value_info("limit", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, None)],
                              [numpy_helper.from_array(np.array([0.5], np.float32), "iou")])
    path = save(finish(graph, 11), tmp_path)
    with pytest.raises(KilnError) as refused:
        compiler.compile(path, output=tmp_path / "m.so")
    assert "max_output_boxes_per_class" in str(refused.value) and "--input-value limit=" in str(refused.value)
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, -0.1, 1, 0.9], [0, 10, 1, 11], [0, 10.1, 1, 11.1],
                       [0, 100, 1, 101]]], np.float32)
    scores = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3]]], np.float32)
    artifact = compiler.compile(path, output=tmp_path / "m.so", input_values={"limit": [3]})
    assert_matches_onnxruntime(path, artifact.path, {"boxes": boxes, "scores": scores, "limit": np.array([3])})
