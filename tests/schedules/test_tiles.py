"""The register-tile arithmetic of compiler/schedules/tiles.py and the tiles Contraction fixes (not tuned):
vector widths, register tiles within the register budget, streaming tiles for memory-bound kernels, the pixels
of a register-tile transpose."""

import pytest

from compiler.schedules.common import vector_factors
from compiler.schedules.tiles import group_widths, register_tile, streaming_tile, tile_lanes
from compiler.schedules.transposed_input import tile_pixels


def test_vector_widths_are_powers_of_two_dividing_the_axis():
    assert vector_factors(1000, 16) == [8, 4]
    assert vector_factors(512, 16) == [32, 16, 8, 4]
    assert vector_factors(10, 16) == [10]


def test_register_tile_prefers_exact_divisors_within_the_register_budget():
    assert register_tile(169, 1000, 16) == (13, 8)  # SqueezeNet's classifier: 13 rows x one half vector
    assert register_tile(56, 64, 16) == (8, 32)
    assert register_tile(128, 256, 16) == (16, 16)  # more rows on a tie...
    assert register_tile(128, 256, 16, aliased_rows=True) == (8, 32)  # ...unless they share cache sets
    assert register_tile(7, 512, 16) == (7, 32)
    assert register_tile(14, 256, 16, group=32, wide=True) == (7, 32)  # packed weights: wider vectors on a tie
    assert register_tile(128, 768, 16, group=64, wide=True) == (8, 32)
    rows, vf = register_tile(56, 64, 8)  # AVX2: 16 registers, a smaller tile
    assert rows * -(-vf // 8) <= 12


def test_channels_no_whole_vector_divides_get_tiles_of_several_narrower_vectors():
    assert register_tile(56, 24, 16) == (8, 24) and tile_lanes(24, 16) == 8  # MobileNetV2: 3 vectors of 8
    assert register_tile(56, 60, 16) == (8, 12) and tile_lanes(12, 16) == 4
    assert tile_lanes(32, 16) == 32 and tile_lanes(10, 16) == 10  # powers of two and group widths stay whole
    assert register_tile(56, 48, 16) == (14, 16)  # a whole vector divides 48: unchanged


def test_groups_of_awkward_width_get_a_vector_dividing_the_group():
    assert group_widths(20, 16) == [10, 4]  # ShuffleNet's groups of 20: 10 lanes, not 4
    assert group_widths(40, 16) == [8, 4]  # 8 lanes are half a vector already: powers of two only
    assert group_widths(16, 16) == [16, 8, 4]
    assert register_tile(28, 60, 16, group=20) == (14, 10)


def test_streaming_tile_spans_the_channels_within_the_register_budget():
    assert streaming_tile(56, 144, 16) == (2, 9)  # 9 vectors of channels, 2 pixels: 18 accumulators
    assert streaming_tile(56, 96, 16) == (4, 6)
    assert streaming_tile(56, 768, 16) == (2, 12)
    assert streaming_tile(56, 32, 16) is None  # the usual tile is as wide already
    assert streaming_tile(56, 100, 16) is None


def _depthwise_kernel(size: int, channels: int, window: int = 3):
    import tvm  # noqa: PLC0415
    from tvm import te  # noqa: PLC0415

    x = te.placeholder((1, size + window - 1, size + window - 1, channels), name="x")
    weight = te.placeholder((window, window, channels), name="w")
    ry, rx = te.reduce_axis((0, window), "ry"), te.reduce_axis((0, window), "rx")
    y = te.compute((1, size, size, channels),
                   lambda n, h, x_, c: te.sum(x[n, h + ry, x_ + rx, c] * weight[ry, rx, c], axis=[ry, rx]))
    return tvm.IRModule({"main": te.create_prim_func([x, weight, y])})


def test_streaming_kernels_are_fixed_and_never_taken_from_a_database():
    """A memory-bound kernel's schedule samples nothing: the tuner leaves it alone and compile schedules it before
    applying tuning records, so a record from an older schedule cannot replace it. A small one stays tunable."""
    from compiler.build.schedule import _schedule_fixed  # noqa: PLC0415
    from compiler.passes.relax_util import SCHEDULED, is_scheduled  # noqa: PLC0415
    from compiler.schedules import fixed_schedule  # noqa: PLC0415

    big, small = _depthwise_kernel(56, 144), _depthwise_kernel(14, 144)
    found = fixed_schedule(big, 16)
    assert found is not None and "T.unroll(9)" in found.mod.script()
    assert fixed_schedule(small, 16) is None
    assert is_scheduled(_schedule_fixed(big, 16)["main"])
    untouched = _schedule_fixed(small, 16)["main"]
    assert untouched.attrs is None or SCHEDULED not in untouched.attrs


def test_a_wide_window_over_a_large_map_keeps_the_few_terms_tile():
    """ConvNeXt's 7x7 depthwise convolution over 56x56x96 (1.2 MB) is bound by its 49 terms, not by memory: the
    few-terms tile (7 pixels x 32 channels) ran it in 0.149 ms, the streaming tile (4 x 6 vectors) in 0.376."""
    from compiler.schedules import fixed_schedule  # noqa: PLC0415

    script = fixed_schedule(_depthwise_kernel(56, 96, 7), 16).mod.script()
    assert "T.vectorized(32)" in script and "T.unroll(6)" not in script
    assert "T.unroll(6)" in fixed_schedule(_depthwise_kernel(56, 96), 16).mod.script()  # 3x3: streaming


@pytest.mark.parametrize("width, lanes, pixels", [(14, 16, 14), (14, 8, 7), (56, 16, 14), (30, 16, 15), (17, 16, None),
                                                  (7, 16, 7), (3, 16, None)])
def test_tile_pixels_divide_the_row_and_fit_a_vector(width, lanes, pixels):
    assert tile_pixels(width, lanes) == pixels
