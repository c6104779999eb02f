"""The AVX-512 presets build with whole 512-bit vectors (targets/*.json: -prefer-256-bit): LLVM's tuning for
Ice Lake / Sapphire Rapids otherwise split 16-lane float-to-uint8 conversions (rounded and clipped, as a model's
own QuantizeLinear or Cast computes them; Kiln's int8 quantize used to) into two 8-lane halves."""

import numpy as np
import pytest

from compiler.targets import get_target


def _quantize_kernel():
    """float32 -> uint8 rounded and clipped: clip(round(x * 4) + 128, 0, 255), 16 lanes at a time."""
    import tvm  # noqa: PLC0415
    from tvm import te, tirx  # noqa: PLC0415

    x = te.placeholder((1024,), name="x")
    y = te.compute((1024,), lambda i: tirx.max(tirx.min(tirx.nearbyint(x[i] * 4.0) + 128.0, 255.0), 0.0)
                   .astype("uint8"), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    _outer, inner = sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 16])
    sch.vectorize(inner)
    return sch.mod


@pytest.mark.parametrize("preset", ["x86-avx512", "x86-amx"])
def test_uint8_conversion_is_one_512_bit_instruction(preset):
    import tvm  # noqa: PLC0415

    from compiler.build.lower import TIR_PIPELINE  # noqa: PLC0415

    built = tvm.tirx.build(_quantize_kernel(), target=tvm.target.Target(get_target(preset).tvm_target),
                           pipeline=TIR_PIPELINE)
    assembly = built.inspect_source("asm")
    assert "vpmovdb" in assembly and "vpackuswb" not in assembly
    assert "vcvttps2dq\t%zmm" in assembly


def test_the_conversion_kernel_rounds_half_to_even_and_clips():
    """The kernel above runs here (this machine has AVX-512) and computes what numpy does."""
    import tvm  # noqa: PLC0415

    from compiler.build.lower import TIR_PIPELINE  # noqa: PLC0415

    preset = get_target("x86-avx512")
    if not preset.runs_here():
        pytest.skip("needs AVX-512")
    built = tvm.tirx.build(_quantize_kernel(), target=tvm.target.Target(preset.tvm_target), pipeline=TIR_PIPELINE)
    x = (np.random.default_rng(3).standard_normal(1024) * 40).astype(np.float32)
    x[:4] = [0.125, 0.375, -40.0, 40.0]  # halves: 0.5 -> 0, 1.5 -> 2; clipped both ways
    out = tvm.runtime.tensor(np.zeros(1024, np.uint8))
    built["main"](tvm.runtime.tensor(x), out)
    expected = np.clip(np.round(x * 4) + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out.numpy(), expected)
