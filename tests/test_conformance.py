"""The ONNX backend conformance suite (tests/conformance/): no regression against the committed known failures.

A spread of the cases (every 25th by name) runs by default; the whole suite, in worker processes that survive
crashes, is marked slow. `make conformance` reruns it and rewrites tests/conformance/STATUS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance.run import run_engine
from tests.conformance.suite import all_cases, run_case

HERE = Path(__file__).resolve().parent / "conformance"
KNOWN = json.loads((HERE / "known_failures.json").read_text())
CASES = all_cases()
SPREAD = sorted(CASES)[::25]


def test_the_suite_is_complete():
    kinds = {c.kind for c in CASES.values()}
    assert kinds == {"node", "simple", "pytorch-converted", "pytorch-operator"}
    assert len(CASES) > 1900
    assert set(KNOWN) <= set(CASES)


@pytest.mark.parametrize("name", SPREAD)
def test_case_outcome_is_no_worse_than_known(name, tmp_path):
    outcome, detail = run_case(CASES[name], "kiln", tmp_path)
    if name in KNOWN:
        # a known failure may not turn into a crash from a clean refusal; it may start passing
        assert not (KNOWN[name] == "unsupported" and outcome == "crash"), detail
    else:
        assert outcome == "pass", f"{name} regressed: {outcome}: {detail}"


@pytest.mark.slow
def test_every_case_passing_before_still_passes():
    results = run_engine("kiln", sorted(CASES), workers=2, timeout=120, say=lambda _m: None)
    regressed = sorted(n for n, r in results.items() if r["outcome"] != "pass" and n not in KNOWN)
    assert not regressed, f"{len(regressed)} case(s) regressed: " + "; ".join(
        f"{n}: {results[n]['outcome']} {results[n]['detail'][:80]}" for n in regressed[:20])
