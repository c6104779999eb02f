"""Kiln's own graph passes: structure before/after on tiny modules, and numbers against ONNX Runtime."""

import numpy as np
import pytest
import tvm
from onnx import helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from compiler.passes.fold_batch_norm import fold_batch_norm
from compiler.pipeline import graph_passes, pass_names
from tests.models import F32, compile_and_check, finish

R = np.random.default_rng(2)


def _bn_weights(c):
    return {"s": R.uniform(0.5, 1.5, c), "b": R.standard_normal(c), "m": R.standard_normal(c),
            "v": R.uniform(0.5, 1.5, c)}


def conv_bn_model(conv_bias: bool = True, channels: int = 6):
    weights = {"w": R.standard_normal((channels, 3, 3, 3)), **_bn_weights(channels)}
    if conv_bias:
        weights["cb"] = R.standard_normal(channels)
    conv_inputs = ["x", "w"] + (["cb"] if conv_bias else [])
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], epsilon=1e-3)]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, channels, 8, 8])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return finish(graph)


def gemm_bn_model():
    weights = {"w": R.standard_normal((10, 5)), "gb": R.standard_normal(5), **_bn_weights(5)}
    nodes = [helper.make_node("Gemm", ["x", "w", "gb"], ["g"]),
             helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "gemm_bn", [helper.make_tensor_value_info("x", F32, [4, 10])],
                              [helper.make_tensor_value_info("y", F32, [4, 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return finish(graph)


def _ops(mod) -> list[str]:
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            found.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


def _fold(model):
    mod = from_onnx(model)
    before = relax.transform.FoldConstant()(mod)
    after = relax.transform.DeadCodeElimination(["main"])(fold_batch_norm(before))
    return before, after


@pytest.mark.parametrize("conv_bias", [True, False])
def test_fold_batch_norm_removes_bn_after_conv(conv_bias):
    before, after = _fold(conv_bn_model(conv_bias))
    assert "relax.nn.batch_norm" in _ops(before)
    assert "relax.nn.batch_norm" not in _ops(after)
    assert _ops(after).count("relax.nn.conv2d") == 1
    assert _ops(after).count("relax.add") == 1  # conv bias and BN shift merged into one add


def test_fold_batch_norm_after_gemm():
    before, after = _fold(gemm_bn_model())
    assert "relax.nn.batch_norm" in _ops(before)
    assert "relax.nn.batch_norm" not in _ops(after)
    assert "relax.matmul" in _ops(after)


def test_fold_batch_norm_keeps_bn_on_non_constant_weights():
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", F32, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", F32, [1, 3, 4, 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in _bn_weights(3).items()])
    _, after = _fold(finish(graph))
    assert "relax.nn.batch_norm" in _ops(after)


@pytest.mark.parametrize("model", [conv_bn_model(True), conv_bn_model(False), gemm_bn_model()],
                         ids=["conv_bias", "conv", "gemm"])
def test_folded_models_match_onnxruntime(model, tmp_path):
    compile_and_check(model, tmp_path)


def test_nchw_layout_matches_onnxruntime(tmp_path):
    compile_and_check(conv_bn_model(True), tmp_path, layout="NCHW")


def test_pipeline_names_every_pass():
    names = pass_names(graph_passes())
    assert "kiln.FoldBatchNorm" in names
    assert names.index("kiln.FoldBatchNorm") < names.index("LegalizeOps") < names.index("FuseOps")
    assert "kiln.ConvertLayout" in pass_names(graph_passes("NHWC"))
    assert "kiln.ConvertLayout" not in pass_names(graph_passes("NCHW"))


def clip_model(lo=0.0, hi=6.0):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, 4, 8, 8])],
                              [numpy_helper.from_array(R.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.array(lo, np.float32), "lo"),
                               numpy_helper.from_array(np.array(hi, np.float32), "hi")])
    return finish(graph)


def _raise(model):
    from compiler.passes.raise_clamps import raise_clamps

    before = relax.transform.FoldConstant()(from_onnx(model))
    return before, relax.transform.DeadCodeElimination(["main"])(raise_clamps(before))


def test_raise_clamps_turns_clip_kernels_into_relax_ops():
    before, after = _raise(clip_model())
    assert _ops(before).count("relax.call_tir") == 2
    assert "relax.call_tir" not in _ops(after)
    assert _ops(after).count("relax.maximum") == 1 and _ops(after).count("relax.minimum") == 1


def test_clip_with_nan_bound_means_no_bound(tmp_path):
    compile_and_check(clip_model(hi=float("nan")), tmp_path)  # ONNX: a NaN bound is no bound


def test_relu6_follows_nhwc_without_transposes(tmp_path):
    mod = from_onnx(clip_model())
    with tvm.target.Target({"kind": "llvm"}):
        graph = graph_passes("NHWC")
        lowered = tvm.transform.Sequential(graph[: pass_names(graph).index("LegalizeOps")])(mod)
    assert _ops(lowered).count("relax.permute_dims") == 2  # the model's input and output borders only
    compile_and_check(clip_model(), tmp_path)


@pytest.mark.parametrize("cout, padded", [(1000, 1008), (18, 32), (24, 32)])
def test_pad_channels_pads_weights_and_slices_back(tmp_path, cout, padded):
    """Narrow ones too: PP-OCRv4's detector has 3x3 96 -> 24 convolutions at 160x160 (computed as three 8-lane
    vectors) and a 1x1 96 -> 18 one (nine 2-lane vectors); padded, they also become int8 sites."""
    from compiler.passes.pad_channels import pad_channels

    model = single_conv(cout=cout)
    mod = from_onnx(model)
    with tvm.target.Target({"kind": "llvm"}):
        graph = graph_passes("NHWC")
        before = tvm.transform.Sequential(graph[: pass_names(graph).index("kiln.PadChannels")])(mod)
        after = relax.transform.FoldConstant()(pad_channels(16)(before))
    assert "relax.strided_slice" not in _ops(before) and _ops(after).count("relax.strided_slice") == 1
    widths = []
    relax.analysis.post_order_visit(after["main"].body, lambda e: widths.append(int(e.ty.shape.values[-1]))
                                    if _op_name_of(e) == "relax.nn.conv2d" else None)
    assert widths == [padded]
    compile_and_check(model, tmp_path)


@pytest.mark.parametrize("cout", [64, 8, 3])
def test_pad_channels_leaves_vector_multiples_alone(cout):
    """Multiples of the vector width, and half a vector or less (a 3-channel image out: padding it to 16 would
    be 5x the work)."""
    from compiler.passes.pad_channels import pad_channels

    with tvm.target.Target({"kind": "llvm"}):
        graph = graph_passes("NHWC")
        before = tvm.transform.Sequential(graph[: pass_names(graph).index("kiln.PadChannels")])(
            from_onnx(single_conv(cout=cout)))
        after = pad_channels(16)(before)
    assert "relax.strided_slice" not in _ops(after)


def single_conv(cout: int):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", F32, [1, 32, 5, 5])],
                              [helper.make_tensor_value_info("y", F32, [1, cout, 5, 5])],
                              [numpy_helper.from_array(R.standard_normal((cout, 32, 1, 1)).astype(np.float32), "w"),
                               numpy_helper.from_array(R.standard_normal(cout).astype(np.float32), "b")])
    return finish(graph)


def _op_name_of(expr) -> str:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def packable_model():
    """A strided, dilated, asymmetrically padded conv (64 outputs: two 32-wide panels), a 1x1 conv, a grouped conv
    (left unpacked), then a matmul on [N, tokens, channels] with 128 columns (two 64-wide panels) and a bias."""
    w = {"w3": R.standard_normal((64, 3, 3, 3)), "w1": R.standard_normal((96, 64, 1, 1)),
         "wg": R.standard_normal((96, 48, 3, 3)), "wm": R.standard_normal((96, 128)), "bm": R.standard_normal(128),
         "shape": np.array([0, 96, -1])}
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], strides=[2, 2], dilations=[2, 2], pads=[2, 1, 0, 2]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1"], ["b"]),
             helper.make_node("Conv", ["b", "wg"], ["c"], group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["t"]),
             helper.make_node("Transpose", ["t"], ["tt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tt", "wm"], ["m"]),
             helper.make_node("Add", ["m", "bm"], ["y"])]
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k) for k, v in w.items()]
    graph = helper.make_graph(nodes, "packable", [helper.make_tensor_value_info("x", F32, ["N", 3, 13, 11])],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    return finish(graph)


def test_pack_weights_rewrites_dense_and_plain_convs(tmp_path):
    from compiler.passes.pack_weights import pack_weights

    with tvm.target.Target({"kind": "llvm"}):
        graph = graph_passes("NHWC")
        before = tvm.transform.Sequential(graph[: pass_names(graph).index("kiln.PackWeights")])(
            from_onnx(packable_model(), shape_dict={"x": [2, 3, 13, 11]}))
        after = pack_weights(before)
    assert _ops(before).count("relax.nn.conv2d") == 3 and _ops(before).count("relax.matmul") == 1
    assert _ops(after).count("relax.nn.conv2d") == 1  # the grouped one keeps its weights
    assert "relax.matmul" not in _ops(after)
    packed = sorted(gv.name_hint for gv, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert packed == ["packed_conv2d", "packed_conv2d1", "packed_matmul"]
    compile_and_check(packable_model(), tmp_path, input_shapes={"x": [2, 3, 13, 11]})
    (tmp_path / "dynamic").mkdir()
    compile_and_check(packable_model(), tmp_path / "dynamic")  # symbolic batch reaches the packed kernels too


def _linear(rows: int, depth: int, cols: int, gelu: bool = True):
    """x [1, ROWS, DEPTH] @ W [DEPTH, COLS] + b (then GELU): a transformer's projection."""
    rng = np.random.default_rng(rows * 7 + cols)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["u"])]
    nodes.append(helper.make_node("Gelu", ["u"], ["y"]) if gelu else helper.make_node("Identity", ["u"], ["y"]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", F32, [1, rows, depth])],
                              [helper.make_tensor_value_info("y", F32, [1, rows, cols])],
                              [numpy_helper.from_array(rng.standard_normal((depth, cols)).astype(np.float32) * 0.1,
                                                       "w"),
                               numpy_helper.from_array(rng.standard_normal(cols).astype(np.float32), "b")])
    return finish(graph, 20)


@pytest.mark.parametrize("rows,depth,cols", [(197, 64, 96), (13, 48, 40), (17, 64, 192), (50, 32, 48), (1, 8, 33)])
def test_row_and_column_remainders_match_onnxruntime(tmp_path, rows, depth, cols):
    # rows no register tile divides (197 ViT tokens, 13, 17) are padded to 8 (kiln.PadRows), columns to the vector
    # width (kiln.PadChannels); 50 rows take 10-row tiles, 1 row the matrix-vector tile
    from compiler.schedules.tiles import needs_row_padding

    assert needs_row_padding(rows) == (rows in (197, 13, 17))
    compile_and_check(_linear(rows, depth, cols), tmp_path)


def test_pad_rows_pads_the_activations_and_slices_back():
    from compiler.passes.pad_channels import pad_rows

    with tvm.target.Target({"kind": "llvm"}):
        graph = graph_passes("NHWC")
        before = tvm.transform.Sequential(graph[: pass_names(graph).index("kiln.PadRows")])(
            from_onnx(_linear(197, 64, 96)))
        after = pad_rows()(before)
    assert _ops(after).count("relax.nn.pad") == 1 and _ops(after).count("relax.strided_slice") == 1
    rows = []
    relax.analysis.post_order_visit(after["main"].body, lambda e: rows.append(int(e.ty.shape.values[-2]))
                                    if _op_name_of(e) == "relax.matmul" else None)
    assert rows == [200]


def _attention(heads: int, tokens: int):
    shape = [1, heads, tokens, 16]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(n, F32, shape) for n in "qkv"],
                              [helper.make_tensor_value_info("y", F32, shape)])
    return finish(graph)


@pytest.mark.parametrize("heads,tokens", [(4, 197), (2, 50), (3, 13)])
def test_attention_over_token_counts_no_vector_divides_matches_onnxruntime(tmp_path, heads, tokens):
    # Q.K^T's columns are the tokens: a computed right operand, padded to the vector width (kiln.PadChannels),
    # and its rows (Q's, 16 wide) padded where no tile divides them (kiln.PadRows); P.V's rows are the tokens
    # too (a guarded tile: padding P would copy it)
    compile_and_check(_attention(heads, tokens), tmp_path)


def test_pad_rows_pads_q_of_attention_not_p():
    """Q.K^T over 197 tokens: Q (197 x 16) is narrower than the scores it makes (197 x 208), so its rows are
    padded (ViT-B/16's 12 heads: 0.94 -> 0.32 ms a layer); P (197 x 197) is wider than P.V's output, so not."""
    from compiler.passes.pad_channels import pad_rows

    with tvm.target.Target({"kind": "llvm"}):
        graph = graph_passes("NHWC")
        before = tvm.transform.Sequential(graph[: pass_names(graph).index("kiln.PadRows")])(
            from_onnx(_attention(4, 197)))
        after = pad_rows()(before)
    shapes = []
    relax.analysis.post_order_visit(after["main"].body, lambda e: shapes.append(
        [int(d) for d in e.ty.shape.values[-2:]]) if _op_name_of(e) == "relax.matmul" else None)
    assert shapes == [[200, 208], [197, 16]]


@pytest.mark.parametrize("shape", [[197, 1, 64], [13, 2, 64], [5, 3, 1, 64]])
def test_rows_on_an_outer_axis_are_flattened_and_match_onnxruntime(tmp_path, shape):
    # torch's nn.MultiheadAttention projects [tokens, batch, E]: at batch 1 the tiled axis held 1 row (94 ms
    # against ONNX Runtime's 2.2 for 197 x 768 -> 2304); kiln.FlattenRows makes it [1, tokens, E]
    from compiler.passes.flatten_rows import flatten_rows

    rng = np.random.default_rng(len(shape))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])]
    graph = helper.make_graph(nodes, "seq_first", [helper.make_tensor_value_info("x", F32, shape)],
                              [helper.make_tensor_value_info("y", F32, [*shape[:-1], 48])],
                              [numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), "w"),
                               numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "b")])
    model = finish(graph)
    with tvm.target.Target({"kind": "llvm"}):
        after = flatten_rows(relax.transform.FoldConstant()(from_onnx(model)))
    rows = []
    relax.analysis.post_order_visit(after["main"].body, lambda e: rows.append(int(e.ty.shape.values[-2]))
                                    if _op_name_of(e) == "relax.matmul" else None)
    assert rows == [int(np.prod(shape[:-1]))]
    compile_and_check(model, tmp_path)
