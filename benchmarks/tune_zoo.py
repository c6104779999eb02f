"""Tune the benchmark models into tuning_logs/TARGET/ (how the committed records were made).

    python -m benchmarks.tune_zoo [MODEL ...] [--target x86-avx512] [--minutes 10]

Each zoo model is built reproducibly, given batch 1 (the shapes benchmarks.run compiles with, so the records
apply there), and tuned with `kiln tune` for MINUTES; progress lines go to stderr, each run's JSON summary to
benchmarks/tuning/TARGET-MODEL.json. A second run resumes: kernels at budget are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

from compiler.tuning import tune
from compiler.tuning.progress import TuneDisplay
from runtime.atomic import atomic_write

from .zoo import ZOO, batch_one_shapes

HERE = Path(__file__).resolve().parent
# The models `make bench` and `make bench-quick` compile, so their committed records apply there.
TUNED_MODELS = ["resnet18", "resnet50", "mobilenetv2", "squeezenet", "shufflenet", "minilm", "bert-base", "bert-mini"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=TUNED_MODELS,
                        help=f"from: {', '.join(sorted(ZOO))} (default: {', '.join(TUNED_MODELS)})")
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--minutes", type=float, default=10.0, help="per model")
    parser.add_argument("--trials", type=int, help="per model (with --minutes: whichever comes first)")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(ZOO))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)} (known: {', '.join(sorted(ZOO))})")
    with tempfile.TemporaryDirectory(prefix="kiln-tune-zoo-") as tmp:
        for name in args.models:
            model = ZOO[name]()
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(model, str(path))
            print(f"== {name} for {args.target}, {args.minutes:g} min", file=sys.stderr, flush=True)
            summary = tune.tune(path, target=args.target, minutes=args.minutes, trials=args.trials,
                                input_shapes=batch_one_shapes(model),
                                report=TuneDisplay(sys.stderr, args.minutes, live=False))
            atomic_write(HERE / "tuning" / f"{args.target}-{name}.json", json.dumps(summary.to_json(), indent=1))


if __name__ == "__main__":
    main()
