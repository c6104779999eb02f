"""Fuzz `kiln compile` with mutated models: python -m tests.fuzz.run [--cases 300] [--start 0] [--workers 2]

Each case (tests/fuzz/mutate.py; the case number is its seed) is compiled, and run when it compiles, in worker
processes with a time limit; a worker that dies (segfault, abort) or hangs is replaced and the case counted.
Prints the outcome counts and every finding (internal errors, crashes, hangs) with its case number.
"""

from __future__ import annotations

import argparse
from collections import Counter

from tests.conformance.run import run_engine


def fuzz(cases: range, workers: int = 2, timeout: float = 60.0, say=print) -> dict[str, dict]:
    """Outcome of every case in CASES: ok, refused, internal, or crash (process died or timed out)."""
    return run_engine("fuzz", [str(c) for c in cases], workers, timeout, say=say, module="tests.fuzz.worker")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    results = fuzz(range(args.start, args.start + args.cases), args.workers, args.timeout)
    print(dict(Counter(r["outcome"] for r in results.values())))
    for name, result in sorted(results.items(), key=lambda kv: int(kv[0])):
        if result["outcome"] in ("internal", "crash"):
            print(f"case {name}: {result['outcome']}: {result['detail']}")


if __name__ == "__main__":
    main()
