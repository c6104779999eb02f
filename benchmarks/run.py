"""Kiln against ONNX Runtime and OpenVINO on the benchmark models, in one process run; writes RESULTS.md and plots.

    python -m benchmarks.run [MODEL ...] [--threads 2] [--rounds 3] [--quick] [--out DIR] [--no-write]

Each model is built reproducibly (benchmarks/zoo.py) and compiled for this machine's best preset at batch 1
(with the committed tuning records, and without) and at batch 8 (with them). Every engine then runs the same
seeded inputs with the same thread count: Kiln tuned and untuned, ONNX Runtime fp32 (the reference of every
ratio), OpenVINO's CPU plugin at its default precision and at f32 when it is installed. Engines are timed in
alternating blocks, ROUNDS times; each block records the CPU time other processes used meanwhile (/proc/stat)
and is retaken when that load was high. Outputs are checked against ONNX Runtime in the same run.
`--quick` is the CI-sized run: two small models, one round, short timings, written to benchmarks/quick/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import onnx

import compiler
import runtime
from compiler.kernels.dot_product import BF16, VNNI
from compiler.references import PREPARED, REFERENCES, missing_package, open_reference
from compiler.targets import all_targets
from runtime.atomic import atomic_write
from runtime.bench import Engine, compare_engines, random_inputs

from . import machine, real_exports
from .flops import model_flops
from .footprint import footprint
from .zoo import ZOO, batch_one_shapes

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenetv2", "squeezenet", "shufflenet", "minilm", "bert-base"]
# measured at batch 1 only, named real:NAME (the zoo has a bert-base of its own)
REAL_MODELS = real_exports.prefixed([*real_exports.WHEEL_MODELS, *real_exports.MODELS])
QUICK_MODELS = ["squeezenet", "bert-mini"]
REFERENCE = "onnxruntime"


@dataclass
class Settings:
    """How long and how often each engine is timed, on which batch sizes, against which reference engines."""

    threads: int = 2
    rounds: int = 3
    seconds: float = 1.5  # timed per engine per round (fewer runs for slow models, at least MIN_RUNS)
    max_runs: int = 40
    batches: tuple[int, ...] = (1, 8)
    references: tuple[str, ...] | None = None  # None: every installed one
    # real data: the digits CNN's fp32 / int8 test accuracy (digits.py), all-MiniLM-L6-v2's int8 embeddings (minilm.py)
    digits: bool = True


MIN_RUNS = 8
VARIANT_PRECISION = {"kiln-int8": "int8", "kiln-bf16": "bf16"}


def kiln_variants() -> dict[str, dict]:
    """Kiln's builds at batch 1, as compile options: tuned, untuned, and int8 / bf16 where this machine has the
    instructions (calibrated on seeded random inputs, the distribution the benchmark models are fed)."""
    variants = {"kiln-tuned": {}, "kiln-untuned": {"tuning_log": "none"}}
    usable = [t for t in all_targets().values() if t.runs_here()]
    if any(VNNI.cpu_feature in t.cpu_features for t in usable):
        variants["kiln-int8"] = {"quantize": "int8", "calibration": "random:16"}
    if any(BF16.amx_feature in t.cpu_features for t in usable):
        variants["kiln-bf16"] = {"precision": "bf16"}
    return variants


def installed_references() -> tuple[tuple[str, ...], list[str]]:
    """The reference engines that can run here, and a note for each one that cannot (its package missing)."""
    lacking = {name: missing_package(name) for name in REFERENCES}
    found = tuple(name for name, package in lacking.items() if package is None)
    missing = [f"{name}: not installed (pip install {package}, or the kiln[bench] extra)"
               for name, package in lacking.items() if package]
    return found, missing


def _runs_for(run, feeds: dict, settings: Settings) -> int:
    """Timed runs per engine per round: SETTINGS.seconds worth of the Kiln model, in whole blocks of 4."""
    run(feeds)
    start = time.perf_counter()
    run(feeds)
    latency = max(time.perf_counter() - start, 1e-6)
    runs = min(settings.max_runs, max(MIN_RUNS, int(settings.seconds / latency)))
    return -(-runs // 4) * 4


def _combine(rounds: list[dict]) -> dict:
    """One engine's figures over several rounds: medians of each round's median, p90 and ratio; every ratio."""
    first = rounds[0]
    combined = {key: round(statistics.median(r[key] for r in rounds), 4)
                for key in ("median_ms", "p90_ms", "throughput_per_s", "ratio")}
    return {**combined, "precision": first["precision"], "runs": sum(r["runs"] for r in rounds),
            "round_ratios": sorted(r["ratio"] for r in rounds),
            "outputs_match": all(r["outputs_match"] for r in rounds),
            "max_abs_error": max(r["max_abs_error"] for r in rounds),
            "outside_load_cores": max(r["outside_load_cores"] for r in rounds),
            "retakes": sum(r["retakes"] for r in rounds)}


def bench_batch(path: Path, model: onnx.ModelProto, shapes: dict[str, list[int]], folder: Path,
                settings: Settings) -> dict:
    """Compile PATH at the input SHAPES, time every engine on the same inputs, and return the batch's figures."""
    batch = next(iter(shapes.values()))[0]
    variants = kiln_variants() if batch == 1 else {"kiln-tuned": {}}
    artifacts, compile_s = {}, {}
    for variant, options in variants.items():
        started = time.perf_counter()
        artifacts[variant] = compiler.compile(path, output=folder / f"{path.stem}-b{batch}-{variant}.so",
                                              input_shapes=shapes, **options)
        compile_s[variant] = round(time.perf_counter() - started, 1)
    loaded = {variant: runtime.load(a.path, threads=settings.threads) for variant, a in artifacts.items()}
    first = next(iter(loaded.values()))
    feeds = random_inputs(first.inputs)
    outputs = [o.name for o in first.outputs]
    engines = [Engine(variant, model_.run, VARIANT_PRECISION.get(variant, "f32")) for variant, model_ in loaded.items()]
    shapes_of_feeds = {k: v.shape for k, v in feeds.items()}
    for name in settings.references:
        try:
            engines.append(open_reference(name, str(path), settings.threads, shapes_of_feeds, outputs))
        except Exception as err:  # noqa: BLE001 - a reference that cannot take a model is left out of its row
            print(f"  {name} cannot run {path.name}: {str(err).splitlines()[0][:200]}", file=sys.stderr)
    runs = _runs_for(first.run, feeds, settings)
    rounds = [compare_engines(engines, feeds, REFERENCE, runs, warmup=1, batch=batch).engines
              for _ in range(settings.rounds)]
    tuned = artifacts["kiln-tuned"].manifest.tuning
    return {"shapes": shapes, "gflop": round(model_flops(model, shapes) / 1e9, 3),
            "engines": {e.name: _combine([r[e.name] for r in rounds]) for e in engines},
            "compile_s": compile_s, "artifact_mb": round(artifacts["kiln-tuned"].size_mb, 1),
            "tuned_kernels": tuned["tasks_tuned"], "kernels": tuned["tasks_tuned"] + tuned["tasks_default"],
            "artifact": str(artifacts["kiln-tuned"].path)}


def model_source(name: str, folder: Path) -> tuple[Path, onnx.ModelProto, dict[str, list[int]], tuple[int, ...]]:
    """Model NAME's ONNX file (a zoo graph written into FOLDER, or a real model's file), the model (without its
    weights' data for a real one), its batch-1 input shapes, and the batches it is measured at (None: all)."""
    if name in ZOO:
        model = ZOO[name]()
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        return path, model, batch_one_shapes(model), ()
    path, inputs = real_exports.model_file(name)
    return path, onnx.load(str(path), load_external_data=False), {k: list(v[0]) for k, v in inputs.items()}, (1,)


def available_real_models() -> list[str]:
    """The real models this machine can run: the PP-OCR files (fetched from their wheel) and the exports present
    (`python -m benchmarks.real_exports export` writes them; it needs torch)."""
    return [n for n in REAL_MODELS if n.removeprefix(real_exports.PREFIX) in real_exports.WHEEL_MODELS
            or (real_exports.EXPORTS / f"{n.removeprefix(real_exports.PREFIX)}.onnx").is_file()]


def bench_model(name: str, folder: Path, settings: Settings, progress=print) -> dict:
    """Every batch of SETTINGS for model NAME (a real model: batch 1 only), plus each engine's start-up cost and
    memory at batch 1."""
    path, model, one_shapes, only = model_source(name, folder)
    row = {"model": name, "onnx_mb": round(path.stat().st_size / 1e6, 1), "batches": {}}
    for batch in [b for b in settings.batches if not only or b in only]:
        shapes = {input_name: [batch, *dims[1:]] for input_name, dims in one_shapes.items()}
        result = bench_batch(path, model, shapes, folder, settings)
        row["batches"][str(batch)] = result
        progress(f"{name:<12} batch {batch}: " + "  ".join(
            f"{engine} {e['median_ms']:.2f} ms ({e['ratio']:.2f}x)" for engine, e in result["engines"].items()))
    one = next(iter(row["batches"].values()))
    outputs = [o.name for o in model.graph.output]
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
              for i in model.graph.input}
    row["footprint"] = {"kiln": footprint("kiln", Path(one["artifact"]), one["shapes"], outputs, dtypes)}
    for engine in [e for e in settings.references if e not in PREPARED and e in one["engines"]]:
        row["footprint"][engine] = footprint(engine, path, one["shapes"], outputs, dtypes)
    return row


def run_suite(models: list[str], settings: Settings, progress=print) -> dict:
    """Benchmark MODELS and return the whole report: the run's conditions ('meta') and one row per model."""
    installed, missing = installed_references()
    if REFERENCE not in installed:
        sys.exit("error: onnxruntime is not installed: every ratio is to it (pip install onnxruntime)")
    settings.references = settings.references or installed
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine.describe(),
            "threads": settings.threads, "versions": machine.versions(), "rounds": settings.rounds,
            "batches": list(settings.batches), "peak_gflops": machine.sgemm_peak_gflops(settings.threads),
            "engines_missing": missing}
    progress(f"{meta['machine']}; fp32 sgemm peak {meta['peak_gflops']} GFLOP/s on {settings.threads} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        for name in models:
            rows.append(bench_model(name, Path(tmp), settings, progress))
    for row in rows:
        for batch in row["batches"].values():
            batch.pop("artifact")
    report = {"meta": meta, "results": rows}
    if settings.digits:
        from .digits import evaluate  # noqa: PLC0415 - needs scikit-learn (the bench extra)

        with tempfile.TemporaryDirectory(prefix="kiln-digits-") as tmp:
            report["digits"] = evaluate(Path(tmp))
        progress(f"digits CNN test accuracy: fp32 {report['digits']['kiln_fp32']:.2%}, "
                 f"int8 {report['digits']['kiln_int8']:.2%}")
        from .minilm import evaluate as evaluate_minilm  # noqa: PLC0415

        with tempfile.TemporaryDirectory(prefix="kiln-minilm-") as tmp:
            report["minilm"] = evaluate_minilm(Path(tmp))
        progress(f"all-MiniLM-L6-v2 int8 embedding cosine vs fp32: "
                 f"{report['minilm']['kiln_int8_cosine_vs_ort_fp32']}")
    return report


def write(report: dict, out: Path) -> None:
    """RESULTS.md, results.json and the plots into OUT, each replaced atomically; sections of the old RESULTS.md
    that this report does not write (serving, A/B runs, sweeps) are kept."""
    from .plots import latency_plot, roofline_plot, tuning_curve_plot  # noqa: PLC0415 - matplotlib is optional
    from .report import keep_sections, to_markdown  # noqa: PLC0415

    plots = {"latency": latency_plot(report, out / "latency.png"),
             "roofline": roofline_plot(report, out / "roofline.png"),
             "tuning_curve": tuning_curve_plot(HERE / "tuning" / "x86-avx512-resnet18.json", out / "tuning_curve.png")}
    atomic_write(out / "results.json", json.dumps(report, indent=2))
    results_md = out / "RESULTS.md"
    kept = results_md.read_text() if results_md.is_file() else ""
    atomic_write(results_md, keep_sections(kept, to_markdown(report, {k: v.name for k, v in plots.items() if v})))


def main() -> None:
    parser = argparse.ArgumentParser(description="Kiln vs ONNX Runtime and OpenVINO on the benchmark models.")
    parser.add_argument("models", nargs="*", help=f"from: {', '.join(sorted(ZOO) + REAL_MODELS)} (default: "
                                                  f"{', '.join(DEFAULT_MODELS)} and the real models present)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="comparisons per model and batch (default 3)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: two small models, one short round")
    parser.add_argument("--out", type=Path, default=None, help="folder for RESULTS.md, results.json and plots "
                                                               "(default benchmarks/, benchmarks/quick/ with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS + available_real_models())
    unknown = sorted(set(models) - set(ZOO) - set(REAL_MODELS))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)} (known: {', '.join(sorted(ZOO) + REAL_MODELS)})")
    absent = [n for n in models if n in REAL_MODELS and n not in available_real_models()]
    if absent:
        sys.exit(f"error: no export of {', '.join(absent)}; run `python -m benchmarks.real_exports export` first "
                 "(needs torch and transformers: pip install -e '.[corpus]')")
    settings = Settings(threads=args.threads)
    if args.quick:
        settings.rounds, settings.seconds, settings.max_runs, settings.digits = 1, 0.2, 8, False
    settings.rounds = args.rounds or settings.rounds
    report = run_suite(models, settings)
    report["meta"]["quick"] = args.quick
    if not args.no_write:
        out = args.out or (HERE / "quick" if args.quick else HERE)
        write(report, out)
        print(f"wrote {out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
