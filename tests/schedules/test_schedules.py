"""Kiln's default CPU schedules on awkward shapes: numerically equal to ONNX Runtime, and actually applied."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from tests.models import F32, assert_matches_onnxruntime, finish, save, single_op_model

R = np.random.default_rng(7)


def w(*shape):
    return (R.standard_normal(shape) * 0.3).astype(np.float32)


CONV = {  # name: (input NCHW, weight OIHW, attributes)
    "odd_13x13_to_1000": ([1, 64, 13, 13], (1000, 64, 1, 1), {}),
    "odd_channels_17": ([1, 5, 11, 9], (17, 5, 3, 3), {"pads": [1, 1, 1, 1]}),
    "stride2_even": ([1, 16, 28, 28], (32, 16, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "stride2_odd_input": ([1, 8, 15, 15], (16, 8, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "asymmetric_pad": ([1, 8, 10, 12], (16, 8, 3, 3), {"pads": [0, 1, 2, 1]}),
    "5x5_no_pad": ([1, 4, 12, 12], (8, 4, 5, 5), {}),
    "1x1_stride2": ([1, 32, 14, 14], (64, 32, 1, 1), {"strides": [2, 2]}),
    "depthwise_3x3": ([1, 48, 14, 14], (48, 1, 3, 3), {"group": 48, "pads": [1, 1, 1, 1]}),
    "depthwise_stride2": ([1, 32, 15, 15], (32, 1, 3, 3), {"group": 32, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "single_pixel": ([1, 256, 1, 1], (10, 256, 1, 1), {}),
    # no whole vector divides the channels: tiles of several narrower vectors (tile_lanes)
    "1x1_to_24": ([1, 32, 28, 28], (24, 32, 1, 1), {}),
    "3x3_to_40": ([1, 8, 14, 14], (40, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    # more than a core's L2 of activations over few terms: streaming_tile's wide tiles, MobileNetV2's early blocks
    "depthwise_streaming_144": ([1, 144, 56, 56], (144, 1, 3, 3), {"group": 144, "pads": [1, 1, 1, 1]}),
    "depthwise_streaming_stride2": ([1, 96, 63, 63], (96, 1, 3, 3), {"group": 96, "strides": [2, 2],
                                                                        "pads": [1, 1, 1, 1]}),
    "1x1_4.8MB_output": ([1, 16, 112, 112], (96, 16, 1, 1), {}),  # packed weights: the usual tile
    # as large, but 49 terms per output: bound by arithmetic, it keeps the few-terms tile (STREAMING_TERMS)
    "depthwise_7x7_large_map": ([1, 96, 56, 56], (96, 1, 7, 7), {"group": 96, "pads": [3, 3, 3, 3]}),
    # 1.2 MB of weights, more rows than columns: weight panels walk chunks of rows (_panels_inside_row_chunks)
    "batch4_weights_spill": ([4, 128, 10, 10], (256, 128, 3, 3), {"pads": [1, 1, 1, 1]}),
}

MATMUL = {  # name: (a shape, b shape)
    "gemv_1000": ([1, 512], [512, 1000]),
    "odd_169x37": ([169, 40], [40, 37]),
    "tall": ([256, 64], [64, 48]),
    "batched_attention": ([2, 4, 32, 16], [2, 4, 16, 32]),
    "weights_spill_in_row_chunks": ([8, 128, 512], [512, 640]),  # 1.3 MB of packed weights, 1024 rows
}


def _compile(model, tmp_path):
    path = save(model, tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so")
    assert_matches_onnxruntime(path, artifact.path)
    return artifact.manifest.kernels


@pytest.mark.parametrize("case", sorted(CONV))
def test_conv_shapes(case, tmp_path):
    shape, weight, attrs = CONV[case]
    kernels = _compile(single_op_model("Conv", {"x": shape}, weights={"w": w(*weight), "b": w(weight[0])}, **attrs),
                       tmp_path)
    assert kernels["unscheduled"] == 0, kernels


@pytest.mark.parametrize("case", sorted(MATMUL))
def test_matmul_shapes(case, tmp_path):
    a, b = MATMUL[case]
    kernels = _compile(single_op_model("MatMul", {"a": a}, weights={"b": w(*b)}), tmp_path)
    assert kernels["unscheduled"] == 0, kernels


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
])
def test_pooling_after_conv(op, attrs, tmp_path):
    conv = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
    pool = helper.make_node(op, ["c"], ["y"], **attrs)
    graph = helper.make_graph([conv, pool], "pool", [helper.make_tensor_value_info("x", F32, [1, 3, 13, 13])],
                              [helper.make_value_info("y", helper.make_tensor_type_proto(TensorProto.FLOAT, None))],
                              [numpy_helper.from_array(w(16, 3, 3, 3), "w")])
    kernels = _compile(finish(graph), tmp_path)
    assert kernels["unscheduled"] == 0, kernels


@pytest.mark.parametrize("groups, cin, cout", [(3, 24, 48), (4, 32, 32), (8, 64, 128)])
def test_grouped_conv_is_split_per_group(groups, cin, cout, tmp_path):
    model = single_op_model("Conv", {"x": [1, cin, 14, 14]}, weights={"w": w(cout, cin // groups, 3, 3)},
                            group=groups, pads=[1, 1, 1, 1])
    kernels = _compile(model, tmp_path)
    assert kernels["unscheduled"] == 0, kernels


@pytest.mark.parametrize("widths", [(64, 64), (48, 80), (24, 40, 16)])
def test_channel_concatenation_is_copied_piece_by_piece(widths, tmp_path):
    """SqueezeNet's fire module: convolutions concatenated along the channels (the last axis in NHWC), then a
    ReLU. The piecewise schedule must give ONNX Runtime's result for pieces of unequal widths."""
    nodes, weights, names = [], {}, []
    for i, width in enumerate(widths):
        weights[f"w{i}"] = w(width, 16, 1, 1)
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"]))
        names.append(f"c{i}")
    nodes += [helper.make_node("Concat", names, ["cat"], axis=1), helper.make_node("Relu", ["cat"], ["y"])]
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", F32, [1, 16, 9, 11])],
                              [helper.make_tensor_value_info("y", F32, [1, sum(widths), 9, 11])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    path = save(finish(graph), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "m.so", tuning_log="none")
    assert_matches_onnxruntime(path, artifact.path)


def test_the_piecewise_schedule_splits_the_channel_loop_where_pieces_meet():
    import tvm  # noqa: PLC0415
    from tvm import s_tir, te, topi  # noqa: PLC0415

    from compiler.schedules.common import root_blocks  # noqa: PLC0415
    from compiler.schedules.injective import Injective  # noqa: PLC0415

    a, b = te.placeholder((1, 5, 5, 48), name="a"), te.placeholder((1, 5, 5, 80), name="b")
    func = te.create_prim_func([a, b, topi.concatenate([a, b], axis=3)])
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    assert Injective(16).schedule(sch, root_blocks(sch)) is not None
    script = sch.mod.script()
    assert "pragma_loop_partition_hint" in script and "T.vectorized(16)" in script


def _shuffle_model(channels, groups, size=9):
    """Conv -> channel shuffle (Reshape, Transpose, Reshape as in ShuffleNet) -> depthwise Conv."""
    five = np.array([0, groups, channels // groups, size, size], np.int64)
    four = np.array([0, channels, size, size], np.int64)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"]),
             helper.make_node("Reshape", ["c", "five"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "four"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"], group=channels, pads=[1, 1, 1, 1])]
    inits = {"w1": w(channels, 8, 1, 1), "w2": w(channels, 1, 3, 3), "five": five, "four": four}
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", F32, [1, 8, size, size])],
                              [helper.make_tensor_value_info("y", F32, [1, channels, size, size])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return finish(graph)


@pytest.mark.parametrize("channels, groups", [(60, 3), (48, 2), (320, 2), (72, 8)])
def test_channel_shuffles_match_onnxruntime(channels, groups, tmp_path):
    """ShuffleNet's channel shuffles in NHWC: a permutation of the innermost axis, scheduled as vector reads of
    its contiguous runs (runs of 20, 24, 160 and 9 channels)."""
    kernels = _compile(_shuffle_model(channels, groups), tmp_path)
    assert kernels["unscheduled"] == 0, kernels


def test_a_channel_shuffle_reads_its_runs_as_vectors_and_other_gathers_keep_the_fused_schedule():
    import tvm  # noqa: PLC0415
    from tvm import s_tir, te  # noqa: PLC0415

    from compiler.schedules.common import root_blocks  # noqa: PLC0415
    from compiler.schedules.injective import Injective, shuffle_group  # noqa: PLC0415

    def scheduled(index):
        a = te.placeholder((1, 5, 5, 60), name="a")
        func = te.create_prim_func([a, te.compute((1, 5, 5, 60), lambda n, h, x, c: a[n, h, x, index(c)])])
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        block = root_blocks(sch)[0]
        group = shuffle_group(sch.get(block))
        assert Injective(16).schedule(sch, root_blocks(sch)) is not None
        return group, sch.mod.script()

    group, script = scheduled(lambda c: c % 3 * 20 + c // 3)  # shuffle of 3 groups of 20
    assert group == 3 and "T.unroll(3)" in script and "T.vectorized(20)" in script
    for index in (lambda c: c, lambda c: 59 - c, lambda c: c * 7 % 60):  # a copy, a reversal, a stride of 7
        group, script = scheduled(index)
        assert group is None and "T.unroll(3)" not in script


def _injective_blocks(chain):
    """The blocks Injective leaves in a kernel of CHAIN's te stages over a 5x5 input (after its inlining)."""
    import tvm  # noqa: PLC0415
    from tvm import s_tir, te  # noqa: PLC0415

    from compiler.schedules.common import root_blocks  # noqa: PLC0415
    from compiler.schedules.injective import Injective  # noqa: PLC0415

    x = te.placeholder((5, 5), name="x")
    func = te.create_prim_func([x, chain(x)])
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    assert Injective(16).schedule(sch, root_blocks(sch)) is not None
    return len(root_blocks(sch))


def test_a_choice_read_more_than_once_keeps_its_own_buffer_and_single_reads_fuse():
    from tvm import te, tirx  # noqa: PLC0415

    def checks(x, depth, reads):
        """DEPTH choices (Select on one read of the stage before), with READS > 1 each read three times by a
        stage between them."""
        def choice(p):
            return lambda a, b: tirx.Select(p[a, b] > 0, tirx.const(1.5, "float32"), tirx.const(-0.5, "float32"))

        def triple(p):
            return lambda a, b: p[a, b] + p[a, b] * p[a, b]

        for i in range(depth):
            x = te.compute((5, 5), choice(x), name=f"s{i}")
            if reads > 1:
                x = te.compute((5, 5), triple(x), name=f"r{i}")
        return x

    assert _injective_blocks(lambda x: checks(x, 6, 1)) == 1  # one read each: all in one loop nest
    # each choice read three times would copy it 3^k times into one expression (17 s in TVM's passes for a
    # cast to int4): each stays a buffer of its own instead
    assert _injective_blocks(lambda x: checks(x, 6, 3)) > 1


def test_chained_int4_casts_compile_and_match_onnxruntime(tmp_path):
    """Casts to int4 and back (NaN / inf checks, then a float-to-int wrap) keep their choices in buffers of their
    own and still match ONNX Runtime. The values are whole numbers in int4's range: past it ONNX Runtime rounds
    and saturates where the ONNX reference (and Kiln, and ml_dtypes) truncate and keep the low bits."""
    nodes = [helper.make_node("Cast", ["x"], ["q"], to=TensorProto.INT4),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", F32, [5, 5])],
                              [helper.make_tensor_value_info("y", F32, [5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = save(model, tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so", tuning_log="none")
    values = R.integers(-8, 8, (5, 5)).astype(np.float32)
    assert_matches_onnxruntime(path, artifact.path, inputs={"x": values})


def test_quick_parse_walks_the_same_frames_as_inspect_and_parses_the_same_function():
    import inspect  # noqa: PLC0415

    from tvm.script import tirx as T  # noqa: PLC0415

    from compiler.tvmscript import _frames, quick_parse  # noqa: PLC0415

    ours, theirs = _frames(), inspect.stack()
    def walked(frames):
        return [(f.frame, f.lineno, f.function) for f in frames[1:]]

    assert walked(ours) == walked(theirs)
    # the TVMScript parser reads the decorator's line (code_context) of frames with a source file
    assert all(o.code_context == t.code_context for o, t in zip(ours[1:], theirs[1:]) if t.code_context)

    def parsed():
        @T.prim_func(s_tir=True)
        def double(a: T.Buffer((8,), "float32"), b: T.Buffer((8,), "float32")):
            for i in range(8):
                with T.sblock("b"):
                    vi = T.axis.spatial(8, i)
                    b[vi] = a[vi] * T.float32(2)
        return double

    with quick_parse():
        quick = parsed()
    assert inspect.stack is not _frames and quick.script() == parsed().script()


@pytest.mark.parametrize("shape, perm, tiled", [([1, 112, 112, 64], [0, 3, 1, 2], True),
                                                ([1, 7, 7, 2048], [0, 3, 1, 2], True),
                                                ([1, 75, 75, 24], [0, 3, 1, 2], False),  # 75 has no tile
                                                ([2, 197, 12, 64], [0, 2, 1, 3], False),  # rows move, runs stay
                                                ([3, 5, 33], [2, 0, 1], False)])
def test_transposes_are_tiled_where_tiles_fit_and_always_right(shape, perm, tiled, tmp_path):
    """NHWC -> NCHW at a model's border: tiled so each input cache line is read once (a 112x112x64 one took 1.5 ms
    fused, 0.21 tiled); maps of 7 and 75, odd axes and transposes that keep the innermost axis stay right."""
    from tvm import s_tir  # noqa: PLC0415

    from compiler import frontend  # noqa: PLC0415
    from compiler.pipeline import fuse_kernels, simplify_graph  # noqa: PLC0415
    from compiler.schedules.common import root_blocks  # noqa: PLC0415
    from compiler.schedules.injective import _schedule_transpose  # noqa: PLC0415
    from compiler.targets import get_target  # noqa: PLC0415

    model = single_op_model("Transpose", {"x": shape}, perm=perm)
    path = save(model, tmp_path)
    preset = get_target("x86-avx512")
    kernels = fuse_kernels(simplify_graph(frontend.load_model(path, None), preset, layout="NCHW"), preset)
    (func,) = [f for gv, f in kernels.functions_items() if "transpose" in gv.name_hint]
    sch = s_tir.Schedule(func)
    assert _schedule_transpose(sch, root_blocks(sch)[0], 16) == tiled
    artifact = compiler.compile(path, output=tmp_path / "t.so", layout="NCHW")
    assert_matches_onnxruntime(path, artifact.path)


@pytest.mark.parametrize("tokens, tiled", [(208, True), (128, True), (197, False)])
def test_attention_keys_transposed_after_a_reshape_are_tiled(tokens, tiled, tmp_path):
    """K^T of attention: [tokens, heads * 64] reshaped to heads and transposed to [heads, 64, tokens]; the read's
    innermost index is heads * 64 + d, not one axis. Tiled as a transpose where tiles fit the tokens (ViT-B/16's,
    padded to 208 tokens: 0.110 -> 0.046 ms a call in the model), and right either way."""
    from tvm import s_tir  # noqa: PLC0415

    from compiler import frontend  # noqa: PLC0415
    from compiler.pipeline import fuse_kernels, simplify_graph  # noqa: PLC0415
    from compiler.schedules.common import inline_forward, root_blocks  # noqa: PLC0415
    from compiler.schedules.injective import _schedule_transpose  # noqa: PLC0415
    from compiler.targets import get_target  # noqa: PLC0415

    shape = numpy_helper.from_array(np.array([1, tokens, 12, 64], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["heads"]),
         helper.make_node("Transpose", ["heads"], ["y"], perm=[0, 2, 3, 1])], "keys",
        [helper.make_tensor_value_info("x", F32, [1, tokens, 768])],
        [helper.make_tensor_value_info("y", F32, [1, 12, 64, tokens])], [shape])
    path = save(finish(graph), tmp_path)
    preset = get_target("x86-avx512")
    kernels = fuse_kernels(simplify_graph(frontend.load_model(path, None), preset), preset)
    (func,) = [f for gv, f in kernels.functions_items() if "transpose" in gv.name_hint]
    sch = s_tir.Schedule(func)
    inline_forward(sch, root_blocks(sch)[:-1])  # the reshape into the transpose, as the Injective rule does
    assert _schedule_transpose(sch, root_blocks(sch)[0], 16) == tiled
    artifact = compiler.compile(path, output=tmp_path / "t.so")
    assert_matches_onnxruntime(path, artifact.path)


@pytest.mark.parametrize("tokens", [50, 197])
def test_the_slice_after_padded_columns_reads_the_register_tile(tokens, tmp_path):
    """Q.K^T's columns (the tokens) are padded to whole vectors and sliced back: the slice writes the output from
    the register tile itself instead of the tile going to a whole padded intermediate first (Whisper's 6 x 1500 x
    1504 scores: 54 MB written, read and written again a layer; its Q.K^T 39.8 -> 20.5 ms over 4 layers)."""
    shape = [1, 2, tokens, 16]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["y"])]
    graph = helper.make_graph(nodes, "scores", [helper.make_tensor_value_info(n, F32, shape) for n in "qk"],
                              [helper.make_tensor_value_info("y", F32, [1, 2, tokens, tokens])])
    path = save(finish(graph), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "s.so", dump_dir=tmp_path / "dump", dump_kinds=["tir"])
    assert_matches_onnxruntime(path, artifact.path)
    script = (tmp_path / "dump" / "kernels.tir.py").read_text()
    kernel = script[script.index("def fused_matmul_strided_slice"):]
    kernel = kernel[:kernel.find("@T.prim_func", 1) if "@T.prim_func" in kernel else None]
    allocations = [line for line in kernel.splitlines() if "sblock_alloc_buffer" in line]
    assert len(allocations) == 1, allocations  # the register tile; no padded intermediate
