"""kiln.AttentionBF16: the fused bf16 attention kernel against numpy (shapes no tile divides), and builds that
fuse an encoder's attention (and leave a masked one alone) against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

import compiler
import runtime
from benchmarks.zoo import GraphBuilder, bert_encoder
from compiler.kernels import attention
from compiler.references import onnxruntime_session
from compiler.schedules.injective import Injective
from compiler.targets import get_target
from runtime.bench import random_inputs
from tests.models import save
from tests.quantize.helpers import AMX_TARGET, cosine, needs_amx


def _packer(source: te.Tensor, packed: te.Tensor, target):
    func = te.create_prim_func([source, packed])
    with target:
        sch = Injective(16).apply(func, target, False)
    return tvm.compile(sch.mod, target=target)


@needs_amx
@pytest.mark.parametrize("rows, depth, tokens, width", [(50, 40, 77, 32), (64, 64, 32, 64)])
def test_fused_attention_matches_numpy(rng, rows, depth, tokens, width):
    """50 query rows: a block of 32 and a partial one; 40 channels and 77 tokens padded to whole bf16 chunks."""
    from runtime.tvm_runtime import enable_amx  # noqa: PLC0415

    enable_amx()
    target = get_target(AMX_TARGET).tvm()
    heads = 3
    kt = te.placeholder((1, heads, depth, tokens), "float32", name="kt")
    v = te.placeholder((1, heads, tokens, width), "float32", name="v")
    keys, values = attention.pack_keys(kt, tokens), attention.pack_values(v)
    kernel = attention.attention_kernel([1, heads, rows, depth], tokens, width, 16)
    fused = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target=target)
    assert "tdpbf16ps" in fused.mod.inspect_source("asm")
    q = rng.standard_normal((1, heads, rows, depth)).astype(np.float32) * 0.3
    k = rng.standard_normal((1, heads, tokens, depth)).astype(np.float32)
    val = rng.standard_normal((1, heads, tokens, width)).astype(np.float32)
    packed = [tvm.runtime.tensor(np.zeros([int(d) for d in t.shape], np.uint16)) for t in (keys, values)]
    _packer(kt, keys, target)(tvm.runtime.tensor(np.ascontiguousarray(k.transpose(0, 1, 3, 2))), packed[0])
    _packer(v, values, target)(tvm.runtime.tensor(val), packed[1])
    out = tvm.runtime.tensor(np.full((1, heads, rows, width), np.nan, np.float32))
    fused(tvm.runtime.tensor(q), *packed, out)
    scores = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (p / p.sum(-1, keepdims=True)) @ val
    assert cosine(out.numpy(), expected) > 0.9999
    np.testing.assert_allclose(out.numpy(), expected, atol=0.02 * np.abs(expected).max())  # bf16: 8 bits


@pytest.mark.parametrize("rows, depth, tokens, width", [(50, 40, 77, 32), (20, 64, 30, 48)])
def test_float32_fused_attention_matches_numpy(rng, rows, depth, tokens, width):
    """The float32 kernel: a partial block of rows, tokens padded to whole tiles (77 -> 96), 48 value columns
    (single-vector tiles)."""
    target = get_target("x86-avx512").tvm()
    heads, keys_width = 2, -(-tokens // 32) * 32
    kernel = attention.attention_kernel_fp32([1, heads, rows, depth], keys_width, tokens, width, 16)
    fused = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target=target)
    q = rng.standard_normal((1, heads, rows, depth)).astype(np.float32) * 0.3
    k = rng.standard_normal((1, heads, tokens, depth)).astype(np.float32)
    val = rng.standard_normal((1, heads, tokens, width)).astype(np.float32)
    kt = np.zeros((1, heads, depth, keys_width), np.float32)
    kt[..., :tokens] = k.transpose(0, 1, 3, 2)
    out = tvm.runtime.tensor(np.full((1, heads, rows, width), np.nan, np.float32))
    fused(*(tvm.runtime.tensor(a) for a in (q, kt, val)), out)
    scores = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), (p / p.sum(-1, keepdims=True)) @ val, rtol=1e-4, atol=1e-5)


def _masked_encoder() -> "onnx.ModelProto":  # noqa: F821
    """One attention head over 40 tokens with an additive mask on the scores (as BERT's padding mask)."""
    g = GraphBuilder(1)
    q, k, v = (g.dense("x", 64, 64) for _ in range(3))
    mask = g.weight(np.where(np.arange(40) < 30, 0.0, -1e4).astype(np.float32), "mask")
    scores = g.op("Add", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]), mask])
    out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    from onnx import TensorProto, helper  # noqa: PLC0415

    return g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 64])], {out: [1, 40, 64]},
                   "masked")


@needs_amx
@pytest.mark.parametrize("which", ["encoder", "masked"])
def test_bf16_build_fuses_unmasked_attention_and_matches_onnxruntime(tmp_path, which):
    """The zoo's encoder (scores scaled after Q.K^T; 197 tokens, whose rows kiln.PadRows pads to 200 and slices
    off the scores) gets one fused kernel per layer; a mask added to the scores keeps the float32 attention. Both
    match ONNX Runtime."""
    model = bert_encoder(layers=2, hidden=128, heads=2, ffn=256, seq=197, batch=1) if which == "encoder" \
        else _masked_encoder()
    path = save(model, tmp_path)
    artifact = compiler.compile(path, target=AMX_TARGET, output=tmp_path / "bf16.so", precision="bf16",
                                tuning_log="none", dump_dir=tmp_path / "dump", dump_kinds=("tir",))
    kernels = (tmp_path / "dump" / "kernels.tir.py").read_text()
    assert kernels.count("def bf16_attention") == (1 if which == "encoder" else 0)
    assert ("pack_keys" in kernels) == (which == "encoder")
    assert "def row_softmax" not in kernels if which == "encoder" else "def row_softmax" in kernels
    loaded = runtime.load(artifact.path)
    feeds = random_inputs(loaded.inputs, seed=3)
    ours = next(iter(loaded.run(feeds).values()))
    theirs = onnxruntime_session(str(path), threads=1).run(None, feeds)[0]
    assert cosine(ours, theirs) > 0.999


def test_float32_build_fuses_unmasked_attention_and_matches_onnxruntime(tmp_path):
    """kiln.FuseAttention: a float32 build runs the encoder's attention (197 tokens: rows padded and sliced off,
    K^T's tokens padded to whole register tiles) as one float32 kernel per layer, to float32 accuracy."""
    path = save(bert_encoder(layers=2, hidden=128, heads=2, ffn=256, seq=197, batch=1), tmp_path)
    artifact = compiler.compile(path, target="x86-avx512", output=tmp_path / "fp32.so", tuning_log="none",
                                dump_dir=tmp_path / "dump", dump_kinds=("tir",))
    kernels = (tmp_path / "dump" / "kernels.tir.py").read_text()
    assert kernels.count("def fused_attention") == 1 and "def row_softmax" not in kernels
    assert "kiln.FuseAttention" in artifact.manifest.passes
    loaded = runtime.load(artifact.path)
    feeds = random_inputs(loaded.inputs, seed=4)
    ours = next(iter(loaded.run(feeds).values()))
    theirs = onnxruntime_session(str(path), threads=1).run(None, feeds)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
