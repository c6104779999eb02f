"""Every corpus model compiles for this machine and matches ONNX Runtime within MATCH_OF_RANGE of each output's
range (the first run fetches the files: see models.py)."""

from __future__ import annotations

import pytest

import compiler
from runtime.errors import KilnError
from tests.corpus.models import CORPUS, REFUSED
from tests.corpus.run import check


@pytest.mark.parametrize("entry", [pytest.param(m, id=m.name, marks=[pytest.mark.slow] if m.slow else [])
                                   for m in CORPUS])
def test_corpus_model_compiles_and_matches_onnxruntime(entry, tmp_path):
    row = check(entry, tmp_path)
    assert row["result"] == "match", row


@pytest.mark.parametrize("entry", REFUSED, ids=[m.name for m in REFUSED])
def test_a_corpus_model_kiln_still_refuses_fails_with_one_line(entry, tmp_path):
    with pytest.raises(KilnError) as refused:
        compiler.compile(entry.fetch(), target="auto", output=tmp_path / f"{entry.name}.so")
    assert "\n" not in str(refused.value) and str(refused.value).startswith(("kiln.", entry.path.name))
