"""Compile every corpus model and write tests/corpus/STATUS.md: model, source, exporter, shapes, compile time,
largest error against ONNX Runtime (as a fraction of the output's range), or the one-line error that stopped it.

Run `python -m tests.corpus.run` (`make corpus`).
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import compiler
import runtime
from benchmarks import machine
from compiler.references import onnxruntime_session
from runtime.atomic import atomic_write
from runtime.errors import KilnError
from tests.corpus.models import CORPUS, MATCH_OF_RANGE, REFUSED, CorpusModel, max_error_of_range

STATUS = Path(__file__).resolve().parent / "STATUS.md"


def check(entry: CorpusModel, folder: Path) -> dict:  # or any corpus entry: ZooGraph, TorchExport
    """Compile ENTRY into FOLDER and compare it with ONNX Runtime on each of its input sets: a row of the status
    table ('match' when every output has ONNX Runtime's name and shape and is within MATCH_OF_RANGE of its range;
    the error is the largest over the sets)."""
    row = {"model": entry.name, "source": entry.source, "exporter": entry.exporter, "note": entry.note,
           "shapes": ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in entry.shapes.items()) if entry.shapes
           else "dynamic: run at " + " and ".join("x".join(map(str, next(iter(f.values())).shape))
                                                  for f in entry.input_sets())}
    path = entry.fetch()
    try:
        artifact = compiler.compile(path, target="auto", output=folder / f"{entry.name}.so", input_shapes=entry.shapes)
    except KilnError as err:
        return {**row, "result": "refused", "detail": str(err)}
    model = runtime.load(artifact.path, threads=2)
    session = onnxruntime_session(str(path), threads=2)
    error = max(_error(model.run(feeds), dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds))))
                for feeds in entry.input_sets())
    return {**row, "result": "match" if error <= MATCH_OF_RANGE else "WRONG", "error": error,
            "compile_s": artifact.manifest.compile_seconds, "target": artifact.manifest.target,
            "naive": len(artifact.manifest.kernels["heavy_unscheduled"])}


def _error(ours: dict, theirs: dict) -> float:
    """The largest error of OURS against THEIRS as a fraction of each output's range; inf for a missing output
    or a wrong shape."""
    if set(ours) != set(theirs) or any(ours[n].shape != r.shape for n, r in theirs.items()):
        return float("inf")
    return max(max_error_of_range(ours[n], r) for n, r in theirs.items())


def to_markdown(rows: list[dict]) -> str:
    """STATUS.md: the table, with the date and machine."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Real-model corpus", "",
             f"Written by `python -m tests.corpus.run` (`make corpus`) on {when}, {machine.describe()}. Outputs "
             f"compared with ONNX Runtime on seeded inputs; a match is within {MATCH_OF_RANGE:g} of each output's "
             "range. `make test` runs the same check (tests/corpus/test_corpus.py).", "",
             "| model | source | exporter | shapes | result | target | compile s | max error / range | naive kernels |",
             "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        if r["result"] == "refused":
            lines.append(f"| {r['model']} | {r['source']} | {r['exporter']} | {r['shapes']} | refused: {r['detail']} "
                         "| | | | |")
        else:
            lines.append(f"| {r['model']} | {r['source']} | {r['exporter']} | {r['shapes']} | {r['result']} | "
                         f"{r['target']} | {r['compile_s']:.1f} | {r['error']:.1e} | {r['naive']} |")
    lines += ["", "Naive kernels: heavy kernels no schedule covers (the manifest's `kernels.heavy_unscheduled`): they "
              "run correctly, slowly.", "", "What each model exercises:", ""]
    lines += [f"- {r['model']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kiln-corpus-") as tmp:
        rows = []
        for entry in CORPUS + REFUSED:
            rows.append(check(entry, Path(tmp)))
            print(f"{entry.name}: {rows[-1]['result']}", flush=True)
    atomic_write(STATUS, to_markdown(rows).encode())
    print(f"wrote {STATUS}")


if __name__ == "__main__":
    main()
