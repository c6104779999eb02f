"""kiln.SinkTransposes: the NHWC -> NCHW -> NHWC round trips that layout conversion leaves around elementwise ops
(ConvNeXt's own permutes around its layer norms, PP-OCRv4's hard-swish after a convolution) are taken out; the
numbers stay ONNX Runtime's."""

from __future__ import annotations

import numpy as np
import tvm
from onnx import helper, numpy_helper
from tvm import relax

from compiler import frontend
from compiler.passes.sink_transposes import sink_transposes
from compiler.pipeline import simplify_graph
from compiler.targets import get_target
from tests.models import F32, compile_and_check, finish, save

RNG = np.random.default_rng(11)


def _weights(name: str, *shape) -> "onnx.TensorProto":  # noqa: F821
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _permutes(model, tmp_path) -> int:
    """permute_dims left in MODEL's simplified graph (NHWC build)."""
    preset = get_target("x86-avx512")
    main = simplify_graph(frontend.load_model(save(model, tmp_path), None), preset)["main"]
    found = []
    relax.analysis.post_order_visit(main.body, lambda e: found.append(e) if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", "") == "relax.permute_dims" else None)
    return len(found)


def convnext_block():
    """A stem conv, then twice: depthwise conv -> the model's own permute to NHWC -> layer norm -> linear ->
    permute back -> residual add (ConvNeXt's blocks, exported NCHW)."""
    nodes = [helper.make_node("Conv", ["x", "stem"], ["s"], pads=[1, 1, 1, 1])]
    inits = [_weights("stem", 8, 8, 3, 3), _weights("g", 8), _weights("b", 8), _weights("fc", 8, 8)]
    x = "s"
    for i in range(2):
        inits.append(_weights(f"dw{i}", 8, 1, 3, 3))
        nodes += [helper.make_node("Conv", [x, f"dw{i}"], [f"c{i}"], group=8, pads=[1, 1, 1, 1]),
                  helper.make_node("Transpose", [f"c{i}"], [f"t{i}"], perm=[0, 2, 3, 1]),
                  helper.make_node("LayerNormalization", [f"t{i}", "g", "b"], [f"n{i}"], axis=-1),
                  helper.make_node("MatMul", [f"n{i}", "fc"], [f"m{i}"]),
                  helper.make_node("Transpose", [f"m{i}"], [f"u{i}"], perm=[0, 3, 1, 2]),
                  helper.make_node("Add", [x, f"u{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "convnext", [helper.make_tensor_value_info("x", F32, [1, 8, 10, 10])],
                              [helper.make_tensor_value_info(x, F32, [1, 8, 10, 10])], inits)
    return finish(graph, 17)


def hard_swish_between_convs():
    """conv -> per-channel scale and shift ([C, 1, 1] constants) -> HardSwish -> conv (PP-OCRv4's blocks)."""
    inits = [_weights("w1", 8, 3, 3, 3), _weights("w2", 8, 8, 1, 1),
             numpy_helper.from_array(RNG.uniform(0.5, 1.5, (8, 1, 1)).astype(np.float32), "scale"),
             numpy_helper.from_array(RNG.standard_normal((1, 8, 1, 1)).astype(np.float32), "shift")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "scale"], ["s"]), helper.make_node("Add", ["s", "shift"], ["a"]),
             helper.make_node("HardSwish", ["a"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "hard_swish", [helper.make_tensor_value_info("x", F32, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", F32, [1, 8, 12, 12])], inits)
    return finish(graph, 17)


def test_a_models_own_permutes_cancel_with_the_layout_conversions(tmp_path):
    # left: the input's NCHW -> NHWC and the output's NHWC -> NCHW; the residual adds run in NHWC
    assert _permutes(convnext_block(), tmp_path) == 2
    compile_and_check(convnext_block(), tmp_path, {"x": RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)})


def test_per_channel_constants_and_clips_between_convolutions_stay_nhwc(tmp_path):
    assert _permutes(hard_swish_between_convs(), tmp_path) == 2
    compile_and_check(hard_swish_between_convs(), tmp_path,
                      {"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)})


def _ops(mod) -> list[str]:
    found = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: found.append(e.op.name) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    return found


def test_an_operand_in_the_other_layout_keeps_the_op_where_it_is():
    """add(permute(a), b) with b computed in the permuted layout: moving the permute would take another one for
    b, so the add stays; add(permute(a), constant) moves, with the constant permuted instead."""
    a = relax.Var("a", relax.TensorType([1, 4, 4, 8], "float32"))
    b = relax.Var("b", relax.TensorType([1, 8, 4, 4], "float32"))
    shift = relax.const(RNG.standard_normal((8, 1, 1)).astype(np.float32))
    builder = relax.BlockBuilder()
    with builder.function("main", [a, b]):
        with builder.dataflow():
            nchw = builder.emit(relax.op.permute_dims(a, [0, 3, 1, 2]))
            mixed = builder.emit(relax.op.add(nchw, b))
            shifted = builder.emit(relax.op.add(nchw, shift))
            out = builder.emit_output(relax.Tuple([mixed, shifted]))
        builder.emit_func_output(out)
    before = builder.get()
    after = relax.transform.DeadCodeElimination()(sink_transposes()(before))
    assert _ops(after).count("relax.permute_dims") == 2  # one before the mixed add, one after the shifted add
    inputs = [RNG.standard_normal((1, 4, 4, 8)).astype(np.float32), RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)]
    results = [tvm.relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](
        *[tvm.runtime.tensor(x) for x in inputs]) for mod in (before, after)]
    for want, got in zip(*results):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_a_permute_something_else_reads_too_stays_where_it_is():
    """add(permute(a), constant) where a reduction reads permute(a) too: moving the permute after the add would
    leave two permutes where there was one, so nothing moves."""
    a = relax.Var("a", relax.TensorType([1, 4, 4, 8], "float32"))
    shift = relax.const(RNG.standard_normal((8, 1, 1)).astype(np.float32))
    builder = relax.BlockBuilder()
    with builder.function("main", [a]):
        with builder.dataflow():
            nchw = builder.emit(relax.op.permute_dims(a, [0, 3, 1, 2]))
            shifted = builder.emit(relax.op.add(nchw, shift))
            total = builder.emit(relax.op.sum(nchw, axis=[1]))
            out = builder.emit_output(relax.Tuple([shifted, total]))
        builder.emit_func_output(out)
    after = relax.transform.DeadCodeElimination()(sink_transposes()(builder.get()))
    assert _ops(after).count("relax.permute_dims") == 1
