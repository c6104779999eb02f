"""Realistic architectures end to end (small sizes by default, full sizes marked slow), against ONNX Runtime."""

import pytest

import compiler
import runtime
from benchmarks.zoo import bert_encoder, mobilenet_v2, resnet
from compiler.targets import all_targets
from runtime.bench import random_inputs
from tests.models import assert_matches_onnxruntime, compile_and_check, save


def test_small_resnet(tmp_path):
    compile_and_check(resnet((1, 1, 1, 1), width=8, size=32, classes=10), tmp_path)


def test_small_mobilenet_v2(tmp_path):
    compile_and_check(mobilenet_v2(width_mult=0.25, size=32, classes=10), tmp_path)


def test_transformer_encoder_block(tmp_path):
    compile_and_check(bert_encoder(layers=1, hidden=32, heads=2, ffn=64, seq=8), tmp_path)


def test_dynamic_batch_stays_symbolic(tmp_path):
    path = save(resnet((1, 1, 1, 1), width=8, size=32, classes=10, batch="batch"), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "dyn.so")
    assert artifact.manifest.inputs[0].shape == ["batch", 3, 32, 32]
    assert artifact.manifest.outputs[0].shape == ["batch", 10]
    model = runtime.load(artifact.path)
    for batch in (1, 3):
        out = assert_matches_onnxruntime(path, model, random_inputs(model.inputs, {"batch": batch}))
        assert next(iter(out.values())).shape == (batch, 10)


def test_input_shape_fixes_dynamic_batch(tmp_path):
    path = save(resnet((1, 1, 1, 1), width=8, size=32, classes=10, batch="batch"), tmp_path)
    artifact = compiler.compile(path, output=tmp_path / "fixed.so", input_shapes={"input": [2, 3, 32, 32]})
    assert artifact.manifest.inputs[0].shape == [2, 3, 32, 32]
    assert artifact.manifest.outputs[0].shape == [2, 10]
    assert_matches_onnxruntime(path, artifact.path)


@pytest.mark.slow
@pytest.mark.parametrize("build", [lambda: resnet(), lambda: mobilenet_v2(),
                                   lambda: bert_encoder(layers=2, hidden=256, heads=4, ffn=1024, seq=64)],
                         ids=["resnet18", "mobilenet_v2", "bert_2layer"])
def test_full_size_model(build, tmp_path):
    compile_and_check(build(), tmp_path)


@pytest.mark.parametrize("target", [t.name for t in all_targets().values() if t.runs_here()])
def test_every_runnable_preset_compiles_and_matches(target, tmp_path):
    model = resnet((1, 1, 1, 1), width=16, size=32, classes=10)
    artifact = compile_and_check(model, tmp_path, target=target)
    assert runtime.read_manifest(artifact).target == target
