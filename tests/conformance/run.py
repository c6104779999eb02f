"""Run the ONNX backend conformance suite through Kiln and through TVM's importer alone; write STATUS.md.

    python -m tests.conformance.run [--engine kiln,tvm] [--workers 2] [--only NAME,...] [--timeout 120]

Each engine runs in worker processes (tests/conformance/suite.py) fed one case at a time; a worker that dies
(segfault) or passes the time limit is replaced and its case counted as a crash. Results go to
tests/conformance/results-ENGINE.json; STATUS.md compares the engines; known_failures.json holds Kiln's cases that
do not pass (the test suite fails when a case outside it stops passing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESTART_EVERY = 500  # cases per worker process before a fresh one (each case leaves a library loaded; a start
# costs about 7 s: TVM, and the onnx package generating its node tests)


def worker_answers():
    """The worker side of Worker's protocol: logging quiet, the original stdout kept for answers alone (anything
    else printed, by Python or by native code, goes to stderr); returns answer(obj), which writes one JSON line.
    Call it first, then answer({"ready": True}) once set up."""
    logging.disable(logging.CRITICAL)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def answer(obj: dict) -> None:
        print(json.dumps(obj), file=channel, flush=True)

    return answer


class Worker:
    """One worker process (`python -m MODULE ARG`, e.g. tests.conformance.suite kiln) fed one case name per line,
    answering one JSON line per case."""

    def __init__(self, engine: str, module: str = "tests.conformance.suite"):
        self.engine = engine
        self.module = module
        self.process = None
        self.done = 0

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", self.module, self.engine], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, bufsize=1)
        self.done = 0
        line = self.process.stdout.readline()
        if '"ready"' not in line:
            raise RuntimeError(f"the {self.engine} worker did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def run(self, name: str, timeout: float) -> dict:
        if self.process is None or self.process.poll() is not None or self.done >= RESTART_EVERY:
            self.stop()
            self.start()
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        self.done += 1
        if answer and answer[0].strip():
            try:
                return json.loads(answer[0])
            except ValueError:
                pass
        killed = reader.is_alive()
        self.stop()
        return {"name": name, "outcome": "crash",
                "detail": f"timed out after {timeout:g} s" if killed else "the process died (signal or abort)"}


def run_engine(engine: str, names: list[str], workers: int, timeout: float, say=print,
               module: str = "tests.conformance.suite") -> dict[str, dict]:
    """Every case in NAMES through ENGINE with WORKERS processes of MODULE; results by case name."""
    todo: queue.Queue = queue.Queue()
    for name in names:
        todo.put(name)
    results: dict[str, dict] = {}
    lock = threading.Lock()
    started = time.monotonic()

    def loop():
        worker = Worker(engine, module)
        try:
            while True:
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                result = worker.run(name, timeout)
                with lock:
                    results[name] = result
                    if len(results) % 100 == 0:
                        counts = Counter(r["outcome"] for r in results.values())
                        say(f"{engine}: {len(results)}/{len(names)} {dict(counts)} "
                            f"{time.monotonic() - started:.0f} s")
        finally:
            worker.stop()

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def status_markdown(runs: dict[str, dict[str, dict]], kinds: dict[str, str], meta: dict) -> str:
    """STATUS.md: outcome counts per engine, pass rate by kind, and Kiln's failures by operator."""
    engines = list(runs)
    lines = ["# ONNX backend conformance", "",
             f"Run {meta['date']} with onnx {meta['onnx']}, apache-tvm {meta['tvm']}, Kiln {meta['kiln']}: "
             f"{len(kinds)} cases (`python -m tests.conformance.run`, `make conformance`).", "",
             "- `kiln`: `compiler.compile` for this machine (default schedules, no tuning records), then the runtime.",
             "- `tvm`: TVM's Relax ONNX importer (`from_onnx`) and `tvm.compile` for llvm alone: the baseline.", "",
             "pass: every output within the case's tolerance (onnx's defaults: rtol 1e-3, atol 1e-7); unsupported: "
             "refused cleanly (unsupported operators, or sequence/map/optional inputs); wrong: ran, outputs differ; "
             "crash: any other failure (exception, abort, time limit).", "",
             "| engine | cases | pass | unsupported | wrong | crash | pass rate |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for engine in engines:
        counts = Counter(r["outcome"] for r in runs[engine].values())
        total = len(runs[engine])
        lines.append(f"| {engine} | {total} | " + " | ".join(str(counts[o]) for o in ("pass", "unsupported", "wrong",
                                                                                      "crash"))
                     + f" | {counts['pass'] / total:.1%} |")
    if "kiln" in runs:
        fixed = sum(r["outcome"] == "pass" and r["detail"].startswith("inputs fixed") for r in runs["kiln"].values())
        lines += ["", f"{fixed} of Kiln's passes fix inputs that decide shapes or axes at compile time "
                      "(`--input-value`, with the case's own values): the node tests feed a Reduce's axes, a "
                      "Resize's sizes, TopK's k and the like as inputs, which Kiln's fixed-shape kernels need at "
                      "compile time and ONNX Runtime reads at run time."]
    lines += ["", "Pass rate by kind of case:", "", "| kind | cases | " + " | ".join(engines) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in engines) + " |"]
    for kind in sorted(set(kinds.values())):
        names = [n for n, k in kinds.items() if k == kind]
        rates = [sum(runs[e].get(n, {}).get("outcome") == "pass" for n in names) / len(names) for e in engines]
        lines.append(f"| {kind} | {len(names)} | " + " | ".join(f"{r:.1%}" for r in rates) + " |")
    if "kiln" in runs and "tvm" in runs:
        gained = sorted(n for n in kinds if runs["kiln"].get(n, {}).get("outcome") == "pass"
                        and runs["tvm"].get(n, {}).get("outcome") != "pass")
        lost = sorted(n for n in kinds if runs["tvm"].get(n, {}).get("outcome") == "pass"
                      and runs["kiln"].get(n, {}).get("outcome") != "pass")
        lines += ["", f"Kiln passes {len(gained)} case(s) TVM's importer alone fails, and fails {len(lost)} it "
                      "passes" + (f": {', '.join(lost[:40])}{' ...' if len(lost) > 40 else ''}." if lost else ".")]
    if "kiln" in runs:
        details = Counter()
        for name, result in runs["kiln"].items():
            if result["outcome"] != "pass":
                details[(result["outcome"], result["detail"][:110])] += 1
        lines += ["", "Kiln's most common failures:", "", "| outcome | cases | first line |", "| --- | ---: | --- |"]
        for (outcome, detail), count in details.most_common(25):
            lines.append(f"| {outcome} | {count} | {detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="kiln,tvm")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", help="Comma-separated case names (default: every case).")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from runtime.atomic import atomic_write  # noqa: PLC0415
    from tests.conformance.suite import all_cases  # noqa: PLC0415

    cases = all_cases()
    kinds = {name: case.kind for name, case in cases.items()}
    names = args.only.split(",") if args.only else sorted(cases)
    runs = {}
    for engine in args.engine.split(","):
        runs[engine] = run_engine(engine, names, args.workers, args.timeout)
        if not args.only:  # a partial run prints its results and keeps the last full ones
            atomic_write(HERE / f"results-{engine}.json", json.dumps(runs[engine], indent=1, sort_keys=True) + "\n")
    if args.only:
        for engine, results in runs.items():
            for name, result in sorted(results.items()):
                print(engine, name, result["outcome"], result["detail"])
        return
    for engine in ("kiln", "tvm"):  # the engine not run this time keeps its last results
        path = HERE / f"results-{engine}.json"
        if engine not in runs and path.is_file():
            runs[engine] = json.loads(path.read_text())
    import onnx  # noqa: PLC0415
    import tvm_ffi  # noqa: F401, PLC0415

    import runtime  # noqa: PLC0415

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "onnx": onnx.__version__,
            "tvm": __import__("importlib.metadata").metadata.version("apache-tvm"), "kiln": runtime.__version__}
    atomic_write(HERE / "STATUS.md", status_markdown(runs, kinds, meta))
    if "kiln" in runs:
        known = {n: r["outcome"] for n, r in sorted(runs["kiln"].items()) if r["outcome"] != "pass"}
        atomic_write(HERE / "known_failures.json", json.dumps(known, indent=1, sort_keys=True) + "\n")
    print((HERE / "STATUS.md").read_text())


if __name__ == "__main__":
    main()
