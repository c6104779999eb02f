"""Fuzzed models (tests/fuzz/): `kiln compile` never crashes, hangs or fails without a clear one-line error.

300 mutated models and 300 structure-aware cases (windows of the real-model corpus, mutated as valid ONNX and
checked against ONNX Runtime) run in worker processes (a worker that dies or hangs is a failure of its case);
`make fuzz` runs thousands of each. A sample also goes through the real command line, checking its output."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from tests.fuzz.mutate import mutate, seed_models
from tests.fuzz.run import fuzz
from tests.models import ROOT


def test_three_hundred_mutated_models_fail_cleanly_or_work():
    results = fuzz(range(300), workers=2, timeout=120, say=lambda _m: None)
    outcomes = Counter(r["outcome"] for r in results.values())
    findings = {n: r for n, r in results.items() if r["outcome"] not in ("ok", "refused")}
    assert not findings, f"{outcomes}; " + "; ".join(f"case {n}: {r['outcome']} {r['detail']}"
                                                     for n, r in sorted(findings.items())[:10])
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0  # the mutations reach both ends


def test_three_hundred_structured_cases_reach_tvm_and_match_onnxruntime_or_fail_cleanly():
    results = fuzz(range(300), workers=2, timeout=120, say=lambda _m: None, kind="structured")
    outcomes = Counter(r["outcome"] for r in results.values())
    findings = {n: r for n, r in results.items() if r["outcome"] not in ("ok", "refused", "ort_differs")}
    assert not findings, f"{outcomes}; " + "; ".join(f"case {n}: {r['outcome']} {r['detail']} ({r['case']})"
                                                     for n, r in sorted(findings.items())[:10])
    reached = sum(r["reached_tvm"] for r in results.values())
    assert reached > len(results) / 2, f"only {reached} of {len(results)} cases reached TVM's importer"
    assert outcomes["ok"] > len(results) / 3  # most windows compile, run and match ONNX Runtime


@pytest.mark.parametrize("case", [3, 7, 42, 279, 868, 1422])
def test_the_command_line_answers_a_mutated_model_in_one_line(case, tmp_path):
    model = tmp_path / "fuzzed.onnx"
    model.write_bytes(mutate(case, seed_models()))
    done = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(model), "-o",
                           str(tmp_path / "m.so")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and done.stderr.strip().endswith(")"), done.stderr
