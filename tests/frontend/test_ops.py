"""Each operator family alone, compiled and checked against ONNX Runtime."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import F32, compile_and_check, finish, single_op_model

R = np.random.default_rng(1)


def w(*shape):
    return (R.standard_normal(shape) * 0.5).astype(np.float32)


CASES = {
    "conv_3x3_pad": lambda: single_op_model("Conv", {"x": [1, 3, 17, 17]}, weights={"w": w(8, 3, 3, 3), "b": w(8)},
                                            pads=[1, 1, 1, 1]),
    "conv_stride2_7x7": lambda: single_op_model("Conv", {"x": [1, 3, 23, 23]}, weights={"w": w(4, 3, 7, 7)},
                                                strides=[2, 2], pads=[3, 3, 3, 3]),
    "conv_grouped": lambda: single_op_model("Conv", {"x": [1, 8, 9, 9]}, weights={"w": w(8, 4, 3, 3)}, group=2,
                                            pads=[1, 1, 1, 1]),
    "conv_depthwise": lambda: single_op_model("Conv", {"x": [1, 6, 10, 10]}, weights={"w": w(6, 1, 3, 3)}, group=6,
                                              strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_1x1_dilated_asym_pad": lambda: single_op_model("Conv", {"x": [1, 4, 12, 11]}, weights={"w": w(5, 4, 3, 3)},
                                                         dilations=[2, 2], pads=[0, 1, 2, 1]),
    "gemm_transb_bias": lambda: single_op_model("Gemm", {"x": [3, 20]}, weights={"w": w(7, 20), "b": w(7)},
                                                transB=1, alpha=0.5, beta=2.0),
    "matmul_2d": lambda: single_op_model("MatMul", {"a": [5, 13], "b": [13, 6]}),
    "matmul_batched": lambda: single_op_model("MatMul", {"a": [2, 3, 5, 8], "b": [2, 3, 8, 4]}),
    "maxpool": lambda: single_op_model("MaxPool", {"x": [1, 3, 13, 13]}, kernel_shape=[3, 3], strides=[2, 2],
                                       pads=[1, 1, 1, 1]),
    "averagepool": lambda: single_op_model("AveragePool", {"x": [1, 3, 12, 12]}, kernel_shape=[2, 2],
                                           strides=[2, 2]),
    "global_averagepool": lambda: single_op_model("GlobalAveragePool", {"x": [2, 5, 7, 7]}),
    "relu": lambda: single_op_model("Relu", {"x": [2, 33]}),
    "sigmoid": lambda: single_op_model("Sigmoid", {"x": [2, 33]}),
    "tanh": lambda: single_op_model("Tanh", {"x": [2, 33]}),
    "leaky_relu": lambda: single_op_model("LeakyRelu", {"x": [2, 33]}, alpha=0.1),
    "clip_relu6": lambda: single_op_model("Clip", {"x": [2, 33]}, weights={"lo": np.array(0, np.float32),
                                                                          "hi": np.array(6, np.float32)}),
    "gelu_erf": lambda: single_op_model("Erf", {"x": [4, 9]}),
    "softmax": lambda: single_op_model("Softmax", {"x": [3, 4, 10]}, axis=-1),
    "concat": lambda: single_op_model("Concat", {"a": [1, 2, 4], "b": [1, 3, 4]}, axis=1),
    "transpose": lambda: single_op_model("Transpose", {"x": [2, 3, 4, 5]}, perm=[0, 2, 3, 1]),
    "reshape": lambda: single_op_model("Reshape", {"x": [2, 3, 4]}, weights={"s": np.array([4, -1], np.int64)}),
    "batchnorm": lambda: single_op_model("BatchNormalization", {"x": [2, 3, 5, 5]},
                                         weights={"s": w(3), "b": w(3), "m": w(3),
                                                  "v": np.abs(w(3)) + 0.5}),
    "layernorm": lambda: single_op_model("LayerNormalization", {"x": [2, 6, 16]}, weights={"g": w(16), "b": w(16)},
                                         axis=-1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnxruntime(case, tmp_path):
    compile_and_check(CASES[case](), tmp_path)


def test_residual_add_after_conv(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["y"]),
    ]
    from onnx import numpy_helper

    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", F32, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w(4, 4, 3, 3), "w")])
    compile_and_check(finish(graph), tmp_path)


def test_cumsum_goes_through_tvm_scan_dispatch(tmp_path):
    compile_and_check(single_op_model("CumSum", {"x": [4, 50]}, weights={"a": np.array(1, np.int64)}), tmp_path)


def test_topk_goes_through_tvm_sort_dispatch(tmp_path):
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=-1)
    graph = helper.make_graph([node], "topk", [helper.make_tensor_value_info("x", F32, [3, 20])],
                              [helper.make_tensor_value_info("values", F32, [3, 5]),
                               helper.make_tensor_value_info("indices", TensorProto.INT64, [3, 5])],
                              [numpy_helper.from_array(np.array([5], np.int64), "k")])
    x = np.random.default_rng(9).permutation(60).reshape(3, 20).astype(np.float32)  # distinct: no ties
    compile_and_check(finish(graph), tmp_path, inputs={"x": x})
