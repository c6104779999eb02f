"""The ONNX backend conformance suite (tests/conformance/): no regression against the committed known failures.

Every case but the known crashes and wrong results (and three in four of the `_expanded` function-body variants)
runs through Kiln in worker processes that survive crashes. `make conformance` reruns Kiln and TVM's importer
alone and rewrites tests/conformance/STATUS.md and known_failures.json.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from tests.conformance.run import run_engine
from tests.conformance.suite import all_cases

HERE = Path(__file__).resolve().parent
KNOWN = json.loads((HERE / "known_failures.json").read_text())


def _in_make_test(name: str) -> bool:
    """Every case but three in four of the `_expanded` ones (picked by a checksum of the name, so the same ones
    each run). An expanded case is its operator's ONNX function body: the primitive operators it is built of have
    node tests of their own, and the 458 of them cost 3 minutes of the suite's 2 cores. `make conformance` runs
    them all."""
    if "_expanded" not in name:
        return True
    return zlib.crc32(name.encode()) % 4 == 0


def test_every_case_that_passed_still_passes_and_no_refusal_became_a_crash():
    cases = all_cases()
    assert {c.kind for c in cases.values()} == {"node", "simple", "pytorch-converted", "pytorch-operator"}
    assert len(cases) > 1900 and set(KNOWN) <= set(cases)
    # a known crash or wrong result fails this test neither way: only the cases that pass and the clean refusals
    # (which must not become crashes) are run
    names = sorted(n for n in cases if KNOWN.get(n) in (None, "unsupported") and _in_make_test(n))
    results = run_engine("kiln", names, workers=2, timeout=120, say=lambda _m: None)
    regressed = sorted(n for n, r in results.items() if r["outcome"] != "pass" and n not in KNOWN)
    worse = sorted(n for n, r in results.items() if KNOWN.get(n) == "unsupported" and r["outcome"] == "crash")
    assert not regressed and not worse, f"{len(regressed)} case(s) stopped passing, {len(worse)} refusal(s) " \
        "became crashes: " + "; ".join(f"{n}: {results[n]['outcome']} {results[n]['detail'][:80]}"
                                      for n in (regressed + worse)[:20])
