"""Fuzz `kiln compile`: python -m tests.fuzz.run [--kind fuzz|structured] [--cases 300] [--start 0] [--workers 2]
[--json FILE]

Each case (the case number is its seed) is compiled, and run when it compiles, in worker processes with a time
limit (tests/fuzz/worker.py); a worker that dies (segfault, abort) or hangs is replaced and the case counted.
'fuzz' cases are protobuf and byte mutations of three small models (tests/fuzz/mutate.py); 'structured' cases are
windows of the real-model corpus with mutations that keep them valid ONNX (tests/fuzz/structured.py), checked
against ONNX Runtime. Prints the outcome counts, how many cases reached TVM, and every finding (internal errors,
crashes, hangs, wrong answers) with its case number; --json keeps every case's outcome (written atomically).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from runtime.atomic import atomic_write
from tests.conformance.run import run_engine

FINDINGS = ("internal", "crash", "mismatch")


def fuzz(cases: range, workers: int = 2, timeout: float = 60.0, say=print, kind: str = "fuzz") -> dict[str, dict]:
    """Outcome of every case in CASES: ok, refused, mismatch, internal, or crash (process died or timed out)."""
    return run_engine(kind, [str(c) for c in cases], workers, timeout, say=say, module="tests.fuzz.worker")


def summary(results: dict[str, dict]) -> list[str]:
    """Lines for a report: outcome counts, cases that reached TVM's importer, refusals of models ONNX Runtime runs,
    and each finding with its case number."""
    outcomes = Counter(r["outcome"] for r in results.values())
    reached = sum(bool(r.get("reached_tvm")) for r in results.values())
    lines = [f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()),
             f"reached TVM's importer: {reached} ({reached / max(len(results), 1):.1%})"]
    if any(r.get("ort_runs") for r in results.values()):  # structured cases: ONNX Runtime ran some
        runs = sum(bool(r.get("ort_runs")) for r in results.values())
        gaps = [r for r in results.values() if r["outcome"] == "refused" and r.get("ort_runs")]
        lines.append(f"ONNX Runtime runs {runs}; of those Kiln refuses {len(gaps)} in one line")
    for name, result in sorted(results.items(), key=lambda kv: int(kv[0])):
        if result["outcome"] in FINDINGS:
            lines.append(f"case {name}: {result['outcome']}: {result['detail']} ({result.get('case', '')})")
        elif result["outcome"] == "ort_differs":
            lines.append(f"case {name}: ONNX Runtime differs from onnx's reference, which Kiln matches: "
                         f"{result['detail']} ({result.get('case', '')})")
    return lines


def refusal_reasons(results: dict[str, dict], top: int = 12) -> list[str]:
    """The commonest refusals, their text up to the first digit or quote (so one reason counts once)."""
    reasons = Counter(re.split(r"[0-9'\[]", r["detail"].replace("TMP/model.onnx", ""), maxsplit=1)[0].strip(" :")
                      for r in results.values() if r["outcome"] == "refused")
    return [f"{count:6d}  {reason}" for reason, count in reasons.most_common(top)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["fuzz", "structured"], default="fuzz")
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write every case's outcome here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = fuzz(range(args.start, args.start + args.cases), args.workers, args.timeout, kind=args.kind)
    lines = summary(results)
    lines.insert(1, f"{time.monotonic() - started:.0f} s with {args.workers} workers")
    print("\n".join(lines + ["commonest refusals:"] + refusal_reasons(results)))
    if args.json:
        atomic_write(args.json, json.dumps(results, indent=0, sort_keys=True))


if __name__ == "__main__":
    main()
