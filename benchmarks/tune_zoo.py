"""Tune the benchmark models into tuning_logs/TARGET/ (how the committed records were made).

    python -m benchmarks.tune_zoo [MODEL ...] [--target x86-avx512] [--minutes 10]
    python -m benchmarks.tune_zoo --recheck [MODEL ...]   # best records against the current defaults

Each zoo model is built reproducibly, given batch 1 (the shapes benchmarks.run compiles with, so the records
apply there), and tuned with `kiln tune` for MINUTES; progress lines go to stderr, each run's JSON summary to
benchmarks/tuning/TARGET-MODEL.json. A second run resumes: kernels at budget are skipped. MODEL may also be
real:NAME, a real model of benchmarks.real_exports (its export, or PP-OCR from the model cache), at the shapes it
is benchmarked with (summary: TARGET-real-NAME.json).
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

from .real_exports import MODELS as EXPORTED, WHEEL_MODELS, model_file, prefixed
from .zoo import ZOO, batch_one_shapes

HERE = Path(__file__).resolve().parent
REAL_MODELS = prefixed([*EXPORTED, *WHEEL_MODELS])
# The models `make bench` and `make bench-quick` compile, so their committed records apply there.
TUNED_MODELS = ["resnet18", "resnet50", "mobilenetv2", "squeezenet", "shufflenet", "minilm", "bert-base", "bert-mini"]


def _model(name: str, folder: Path) -> tuple[Path, dict]:
    """(ONNX file, input shapes) of model NAME: a zoo graph written to FOLDER at batch 1, or a real model's file
    at the shapes benchmarks.real_exports runs it with."""
    if name in REAL_MODELS:
        path, inputs = model_file(name)
        if not path.is_file():
            sys.exit(f"error: no export of {name} at {path}; run `python -m benchmarks.real_exports export` first")
        return path, {k: list(shape) for k, (shape, _dtype) in inputs.items()}
    model = ZOO[name]()
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path, batch_one_shapes(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=TUNED_MODELS,
                        help=f"from: {', '.join(sorted(ZOO))} (default: {', '.join(TUNED_MODELS)})")
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--minutes", type=float, default=10.0, help="per model")
    parser.add_argument("--trials", type=int, help="per model (with --minutes: whichever comes first)")
    parser.add_argument("--recheck", action="store_true",
                        help="search nothing: time each kernel's best record against Kiln's current default schedule "
                             "and keep the faster (after a change to the defaults or to how kernels are lowered)")
    args = parser.parse_args()
    known = sorted(ZOO) + REAL_MODELS
    unknown = sorted(set(args.models) - set(known))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)} (known: {', '.join(known)})")
    with tempfile.TemporaryDirectory(prefix="kiln-tune-zoo-") as tmp:
        for name in args.models:
            path, shapes = _model(name, Path(tmp))
            action = "rechecking" if args.recheck else f"{args.minutes:g} min"
            print(f"== {name} for {args.target}, {action}", file=sys.stderr, flush=True)
            summary = tune.tune(path, target=args.target, minutes=args.minutes, trials=args.trials,
                                input_shapes=shapes, recheck=args.recheck,
                                report=TuneDisplay(sys.stderr, args.minutes, live=False))
            suffix = "-recheck" if args.recheck else ""
            summary_file = HERE / "tuning" / f"{args.target}-{name.replace(':', '-')}{suffix}.json"
            atomic_write(summary_file, json.dumps(summary.to_json(), indent=1))


if __name__ == "__main__":
    main()
