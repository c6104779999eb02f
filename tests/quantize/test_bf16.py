"""--precision bf16: AMX bf16 builds against float32, and the error on a target without AMX."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import compiler
import runtime
from compiler.cli import main
from compiler.references import onnxruntime_session
from runtime.bench import random_inputs
from tests.models import save
from tests.quantize.helpers import AMX_TARGET, cosine, needs_amx, tiny_cnn


@needs_amx
def test_bf16_runs_on_amx_and_matches_float(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    artifact = compiler.compile(path, target=AMX_TARGET, output=tmp_path / "bf16.so", precision="bf16",
                                tuning_log="none", dump_dir=tmp_path / "dump", dump_kinds=("asm",))
    # sites: the convolutions, the 16 -> 32 dense and the 32 -> 10 one (padded to 16 columns); on AMX: the 16->16 conv
    assert artifact.manifest.quantization == {"mode": "bf16", "sites": 4, "bf16_sites": 1}
    assert "tdpbf16ps" in (tmp_path / "dump" / "kernels.s").read_text()
    model = runtime.load(artifact.path)
    session = onnxruntime_session(str(path), threads=1)
    for seed in range(3):
        feeds = random_inputs(model.inputs, seed=seed)
        ours, theirs = next(iter(model.run(feeds).values())), session.run(None, feeds)[0]
        assert cosine(ours, theirs) > 0.999
        np.testing.assert_allclose(ours, theirs, atol=0.02 * np.abs(theirs).max())  # bf16: 8 bits of mantissa


def test_bf16_on_a_target_without_amx_is_a_clear_error(tmp_path):
    path = save(tiny_cnn(), tmp_path)
    result = CliRunner().invoke(main, ["compile", str(path), "--target", "x86-avx512", "--precision", "bf16",
                                       "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "target x86-avx512 has no bf16 tile instructions (amx_bf16)" in result.output and "x86-amx" in result.output


@needs_amx
def test_bf16_matmul_over_rows_padded_and_sliced_back_stays_on_amx(tmp_path):
    """197 rows (ViT's tokens) are padded to 200 and the slice back is the kernel's epilogue: the AMX rule
    flattened that slice with the padded block's extents, transform_block_layout refused, and the kernel fell to
    scalar loops (ViT-B/16 in bf16: 8.2 s a run, 71x ONNX Runtime)."""
    from benchmarks.shape_sweep import linear_model  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    model, _shape = linear_model(197, 256, 256, False)
    path = tmp_path / "linear.onnx"
    onnx.save(model, path)
    artifact = compiler.compile(path, target=AMX_TARGET, output=tmp_path / "bf16.so", precision="bf16",
                                tuning_log="none", dump_dir=tmp_path / "dump", dump_kinds=("asm", "tir"))
    assert "strided_slice" in (tmp_path / "dump" / "kernels.tir.py").read_text()
    assert "tdpbf16ps" in (tmp_path / "dump" / "kernels.s").read_text()
    loaded = runtime.load(artifact.path)
    feeds = random_inputs(loaded.inputs)
    ours, theirs = loaded.run(feeds)["y"], onnxruntime_session(str(path), threads=1).run(None, feeds)[0]
    assert cosine(ours, theirs) > 0.999
