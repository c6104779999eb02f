"""Every corpus model compiles for this machine and matches ONNX Runtime within MATCH_OF_RANGE of each output's
range (the first run fetches the files: see models.py)."""

from __future__ import annotations

import pytest

import compiler
import runtime
from compiler.references import onnxruntime_session
from runtime.errors import KilnError
from tests.corpus.models import CORPUS, MATCH_OF_RANGE, REFUSED, max_error_of_range


@pytest.mark.parametrize("entry", [pytest.param(m, id=m.name, marks=[pytest.mark.slow] if m.slow else [])
                                   for m in CORPUS])
def test_corpus_model_compiles_and_matches_onnxruntime(entry, tmp_path):
    path = entry.fetch()
    artifact = compiler.compile(path, target="auto", output=tmp_path / f"{entry.name}.so", input_shapes=entry.shapes)
    model = runtime.load(artifact.path, threads=2)
    session = onnxruntime_session(str(path), threads=2)
    feeds = entry.inputs()
    ours = model.run(feeds)
    theirs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert set(ours) == set(theirs)
    for name, reference in theirs.items():
        assert ours[name].shape == reference.shape, name
        assert max_error_of_range(ours[name], reference) <= MATCH_OF_RANGE, name


@pytest.mark.parametrize("entry", REFUSED, ids=[m.name for m in REFUSED])
def test_a_corpus_model_kiln_still_refuses_fails_with_one_line(entry, tmp_path):
    with pytest.raises(KilnError) as refused:
        compiler.compile(entry.fetch(), target="auto", output=tmp_path / f"{entry.name}.so")
    assert "\n" not in str(refused.value) and str(refused.value).startswith(("kiln.", entry.path.name))
