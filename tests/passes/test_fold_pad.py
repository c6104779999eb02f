"""kiln.FoldPadIntoConv, with Kiln's Pad converter: a zero spatial Pad before a Conv (torch's ZeroPad2d, as
Hugging Face's EfficientNet exports it) becomes the convolution's padding; other pads stay. Numbers against
ONNX Runtime."""

import numpy as np
import pytest
from onnx import helper, numpy_helper
import tvm
from tvm import relax

from compiler import frontend
from compiler.pipeline import simplify_graph
from compiler.targets import get_target
from tests.models import F32, compile_and_check, finish, save

R = np.random.default_rng(5)


def pad_conv_model(pads: list[int], value: float = 0.0, mode: str = "constant", groups: int = 1,
                   conv_pads: tuple = (0, 0, 0, 0), second_reader: bool = False):
    channels = 8
    weights = R.standard_normal((channels, (channels + pads[1] + pads[5]) // groups, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], strides=[2, 2], group=groups, pads=list(conv_pads))]
    outputs = [helper.make_tensor_value_info("y", F32, None)]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["p"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", F32, None))
    graph = helper.make_graph(nodes, "pad_conv", [helper.make_tensor_value_info("x", F32, [1, channels, 15, 15])],
                              outputs, [numpy_helper.from_array(weights, "w"),
                                        numpy_helper.from_array(np.array(pads, np.int64), "pads"),
                                        numpy_helper.from_array(np.array(value, np.float32), "value")])
    return finish(graph)


CASES = {  # name: (model arguments, pads folded into the convolution)
    "efficientnet_same_padding": (dict(pads=[0, 0, 0, 0, 0, 0, 1, 1], groups=8), True),
    "added_to_the_conv_own": (dict(pads=[0, 0, 1, 2, 0, 0, 2, 1], conv_pads=(1, 1, 1, 1)), True),
    "pad_also_read_elsewhere": (dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], second_reader=True), True),
    "non_zero_value": (dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5), False),
    "reflect": (dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), False),
    "channels_padded": (dict(pads=[0, 0, 0, 0, 0, 1, 0, 0]), False),
}


@pytest.mark.parametrize("name", CASES)
def test_pads_fold_into_convolutions_where_exact(name, tmp_path):
    arguments, folds = CASES[name]
    model = pad_conv_model(**arguments)
    preset = get_target("x86-avx512")
    stage = simplify_graph(frontend.load_model(save(model, tmp_path), None), preset)
    convs = []
    relax.analysis.post_order_visit(stage["main"].body, lambda e: convs.append(e) if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", "") == "relax.nn.conv2d" else None)
    (conv,) = convs
    assert (sum(int(p) for p in conv.attrs.padding) > sum(arguments.get("conv_pads", ()))) == folds
    x = R.standard_normal((1, 8, 15, 15)).astype(np.float32)
    compile_and_check(model, tmp_path, {"x": x})


@pytest.mark.parametrize("auto_pad, stride, kernel, groups", [("SAME_UPPER", 2, 3, 8), ("SAME_LOWER", 2, 3, 1),
                                                              ("SAME_UPPER", 1, 5, 8), ("SAME_UPPER", 1, 1, 1),
                                                              ("SAME_LOWER", 2, 4, 1)])
def test_same_auto_pad_is_the_convolutions_own_padding(auto_pad, stride, kernel, groups, tmp_path):
    """Conv with auto_pad SAME_* (EfficientNet exported by torch's dynamo exporter: 76 of its 81): explicit
    padding of the convolution (Kiln's Conv converter), not an opaque pad kernel of TVM's converter that layout
    conversion wraps in an NCHW transpose on either side; odd sizes make the pads asymmetric."""
    weights = R.standard_normal((8, 8 // groups, kernel, kernel)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride, stride], group=groups, auto_pad=auto_pad)],
        "same_conv", [helper.make_tensor_value_info("x", F32, [1, 8, 15, 15])],
        [helper.make_tensor_value_info("y", F32, None)], [numpy_helper.from_array(weights, "w")])
    model = finish(graph)
    preset = get_target("x86-avx512")
    stage = simplify_graph(frontend.load_model(save(model, tmp_path), None), preset)
    ops = []
    relax.analysis.post_order_visit(stage["main"].body, lambda e: ops.append(e.op.name) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    assert "relax.nn.conv2d" in ops and ops.count("relax.permute_dims") == 2 and "relax.call_tir" not in ops
    x = R.standard_normal((1, 8, 15, 15)).astype(np.float32)
    compile_and_check(model, tmp_path, {"x": x})
