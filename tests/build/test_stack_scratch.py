"""Kernel scratch on the stack (compiler/build/stack_scratch.py): register tiles of any size up to the limit,
"global" or "local", are stack slots, not workspace-pool calls; results unchanged."""

import numpy as np
import pytest

import compiler
from tests.models import assert_matches_onnxruntime, save, single_op_model

R = np.random.default_rng(11)


def w(*shape):
    return (R.standard_normal(shape) * 0.3).astype(np.float32)


def test_register_tiles_are_stack_slots_not_workspace_calls(tmp_path):
    """A tile's accumulators live inside the parallel loop; TVM lowered them to a TVMBackendAllocWorkspace /
    FreeWorkspace pair per tile. The machine code of the convolution calls neither."""
    model = single_op_model("Conv", {"x": [1, 64, 14, 14]}, weights={"w": w(128, 64, 1, 1)})
    path = save(model, tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "k.so", dump_dir=tmp_path / "dump",
                                dump_kinds=["asm"])
    assert_matches_onnxruntime(path, artifact.path)
    assembly = (tmp_path / "dump" / "kernels.s").read_text()
    conv = assembly[assembly.index("fused_packed_conv2d"):]
    assert "vfmadd231ps" in conv and "TVMBackendAllocWorkspace" not in conv.split("\t.size")[0]


def _matmul_with_tile(scope: str, rows: int):
    """A 64 x 48 matmul whose ROWS x 48 tile of sums goes through a SCOPE cache inside a parallel loop."""
    import tvm  # noqa: PLC0415
    from tvm import te  # noqa: PLC0415

    a, b = te.placeholder((64, 32), name="a"), te.placeholder((32, 48), name="b")
    k = te.reduce_axis((0, 32), "k")
    c = te.compute((64, 48), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("c")
    cache = sch.cache_write(block, 0, scope)
    i, _j, _k = sch.get_loops(block)
    outer, _inner = sch.split(i, [None, rows])
    sch.parallel(outer)
    sch.reverse_compute_at(cache, outer)
    return sch.mod


@pytest.mark.parametrize("scope, rows, on_stack", [("local", 8, True), ("global", 16, True),
                                                   ("global", 64, False)])
def test_small_scratch_stays_on_the_stack(scope, rows, on_stack):
    """The pass on a parallel matmul whose tile is "local" (8 x 48 floats, 1.5 KB) or "global" (3 KB), both over
    TVM's 1 KB: no workspace call in the lowered code; a 12 KB tile, over the limit, keeps the call. The kernel
    computes the same either way."""
    import tvm  # noqa: PLC0415

    from compiler.build.lower import TIR_PIPELINE  # noqa: PLC0415
    from compiler.build.stack_scratch import MAX_STACK_BYTES  # noqa: PLC0415

    mod = _matmul_with_tile(scope, rows)
    assert (rows * 48 * 4 <= MAX_STACK_BYTES) == on_stack
    built = tvm.tirx.build(mod, target="llvm", pipeline=TIR_PIPELINE)
    assert ("TVMBackendAllocWorkspace" in built.inspect_source("ll")) != on_stack
    x, y = w(64, 32), w(32, 48)
    out = tvm.runtime.tensor(np.zeros((64, 48), np.float32))
    built["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y), out)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-5, atol=1e-5)
