"""Kiln against ONNX Runtime on the zoo models, in one process run; writes benchmarks/RESULTS.md.

    python -m benchmarks.run [MODEL ...] [--threads 2] [--repeat 20] [--no-write]

Each model is built reproducibly (benchmarks/zoo.py), compiled for this machine's best preset with batch 1
fixed, with the committed tuning records and without, then each is timed beside ONNX Runtime on the same inputs
in alternating blocks. Every
block records the CPU time other processes used meanwhile (/proc/stat) and is retaken when that load was high.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import onnx

import compiler
import runtime
from runtime.atomic import atomic_write
from runtime.bench import compare

from .zoo import ZOO, batch_one_shapes

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenetv2", "squeezenet", "shufflenet", "bert-mini"]


def machine() -> str:
    """CPU model, usable cores and vector features, as one line."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    flags = runtime.artifact.host_cpu_features()
    vector = "AVX-512+VNNI" if {"avx512f", "avx512_vnni"} <= flags else "AVX2" if "avx2" in flags else "baseline"
    from runtime.tvm_runtime import usable_cpus  # noqa: PLC0415

    return f"{name}, {len(usable_cpus())} cores, {vector}, {platform.system()} {platform.machine()}"


_FOOTPRINT_PROBE = """
import json, sys, time
start = time.perf_counter()
import runtime
from runtime.bench import random_inputs
model = runtime.load(sys.argv[1])
model.run(random_inputs(model.inputs))
seconds = time.perf_counter() - start
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def runtime_footprint(artifact: Path) -> dict:
    """Import + load + first run of ARTIFACT with the thin runtime alone, in a fresh process: seconds, peak RSS."""
    done = subprocess.run([sys.executable, "-c", _FOOTPRINT_PROBE, str(artifact)], capture_output=True, text=True,
                          check=True, cwd=HERE.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_round(results: list[dict]) -> dict:
    ratios = sorted(r["ratio"] for r in results)
    middle = min(results, key=lambda r: abs(r["ratio"] - statistics.median(ratios)))
    return {**middle, "round_ratios": ratios, "outputs_match": all(r["outputs_match"] for r in results)}


def bench_model(name: str, folder: Path, threads: int, repeat: int, rounds: int) -> dict:
    """Build and compile one zoo model (batch 1) twice, with the committed tuning records (tuning_logs/) and
    without; time each beside ONNX Runtime in ROUNDS rounds. Each variant's row is its round with the median
    ratio, and every round's ratio is kept."""
    model = ZOO[name]()
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    shapes = batch_one_shapes(model)
    started = time.perf_counter()
    tuned = compiler.compile(path, output=folder / f"{name}.so", input_shapes=shapes)
    compile_s = time.perf_counter() - started
    untuned = compiler.compile(path, output=folder / f"{name}.untuned.so", input_shapes=shapes, tuning_log="none")
    footprint = runtime_footprint(tuned.path)
    loaded = {variant: runtime.load(artifact.path, threads=threads)
              for variant, artifact in (("tuned", tuned), ("untuned", untuned))}
    results: dict[str, list[dict]] = {"tuned": [], "untuned": []}
    for _ in range(rounds):
        for variant, artifact in loaded.items():
            results[variant].append(compare(artifact, str(path), threads, repeat=repeat).to_json())
    return {"model": name, "compile_s": round(compile_s, 1), "artifact_mb": round(tuned.size_mb, 1),
            "tuned_kernels": tuned.manifest.tuning["tasks_tuned"],
            "kernels": tuned.manifest.tuning["tasks_tuned"] + tuned.manifest.tuning["tasks_default"],
            "runtime_first_result_s": round(footprint["seconds"], 2),
            "runtime_peak_rss_mb": round(footprint["peak_rss_mb"]), **_median_round(results["tuned"]),
            "untuned": _median_round(results["untuned"])}


def _paired_ms(run: dict) -> tuple[float, float] | None:
    """(default, tuned) searched-kernel ms of a tune summary RUN from the confirmed per-kernel times that
    tuning_logs/TARGET/kiln_tuning.json holds; None when a kernel has no confirmed pair."""
    from compiler.tuning import database_dir, read_notes  # noqa: PLC0415

    notes = read_notes(database_dir(run["target"])).get("tasks", {})
    searched = [t for t in run.get("tasks", []) if t.get("budget")]
    pairs = [(t["weight"], notes.get(t["key"], {})) for t in searched]
    if not pairs or any(not n.get("default_us") or not n.get("best_us") for _w, n in pairs):
        return None
    return (sum(w * n["default_us"] for w, n in pairs) / 1000, sum(w * n["best_us"] for w, n in pairs) / 1000)


def tuning_section(folder: Path = HERE / "tuning") -> list[str]:
    """RESULTS.md lines on the tuning runs behind the committed records: one row per run summary in FOLDER, and
    the tuning curve of ResNet-18 (plotted in tuning_curve.svg)."""
    summaries = sorted(folder.glob("*.json"))
    if not summaries:
        return []
    lines = ["", "## Tuning runs behind the committed records", "",
             "Searched kernels' time = sum over the kernels `kiln tune` searched of (calls x kernel time), each kernel",
             "timed alone with 2 threads: Kiln's default schedules before, the best record after. 'During search' is",
             "what the search measured (default timed once at the start, candidates once each); 'paired' is the",
             "confirmation step: best record and default timed back to back, 3 times each, the medians (records that",
             "lost there were dropped). The whole model also runs the unsearched kernels (layout transposes, copies),",
             "streams its weights from memory rather than cache, and runs the VM: the table above has whole-model",
             "times.", "",
             "| run | stopped | trials | minutes | searched kernels | during search: default ms | tuned ms | gain "
             "| paired: default ms | tuned ms | gain |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for path in summaries:
        run = json.loads(path.read_text())
        curve = run.get("curve") or []
        if len(curve) < 2:
            continue
        default, tuned = curve[0]["searched_kernels_ms"], curve[-1]["searched_kernels_ms"]
        paired = _paired_ms(run)
        paired_text = (f"{paired[0]:.2f} | {paired[1]:.2f} | {paired[0] / paired[1]:.3f}x" if paired
                       else "- | - | -")
        lines.append(f"| {path.stem} | {run.get('stopped', '?')} | {curve[-1]['trials']} | "
                     f"{curve[-1]['seconds'] / 60:.0f} | {run.get('kernels_searched', '?')} | {default:.2f} | "
                     f"{tuned:.2f} | {default / tuned:.3f}x | {paired_text} |")
    curve_file = folder / "x86-avx512-resnet18.json"
    if curve_file.is_file():
        curve = json.loads(curve_file.read_text())["curve"]
        best = min(p["searched_kernels_ms"] for p in curve)
        within = next((p for p in curve if p["searched_kernels_ms"] <= best * 1.1), curve[-1])
        lines += ["", "### Tuning curve: ResNet-18 on x86-avx512", "",
                  "![searched kernels' time against minutes of tuning](tuning_curve.svg)", "",
                  f"Kiln's default schedules start {curve[0]['searched_kernels_ms'] / best - 1:.1%} above the best "
                  f"found ({best:.2f} ms); the search is within 10% of it after {within['seconds'] / 60:.1f} min "
                  f"({within['trials']} trials).", "",
                  "| minutes | trials | searched kernels ms |", "| ---: | ---: | ---: |"]
        step = max(1, len(curve) // 10)
        for point in curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else []):
            lines.append(f"| {point['seconds'] / 60:.1f} | {point['trials']} | {point['searched_kernels_ms']:.2f} |")
    return lines


def to_markdown(rows: list[dict], meta: dict) -> str:
    """RESULTS.md: the run's conditions and one table row per model."""
    lines = [
        "# Benchmark results",
        "",
        f"Run {meta['date']} on {meta['machine']}; {meta['threads']} threads, batch 1, fp32.",
        f"Kiln {meta['kiln']}, TVM {meta['tvm']}, ONNX Runtime {meta['ort']}.",
        "Each model is compiled twice: 'tuned' applies the committed records in tuning_logs/ (kernels without one keep",
        "Kiln's default schedules; 'tuned kernels' says how many have one), 'untuned' uses the default schedules only.",
        "Each is compared with ONNX Runtime in several rounds of alternating timing blocks in one process; a row shows",
        "the round with the median Kiln / ORT ratio and 'range' the lowest and highest round. 'Outside load' is",
        "the CPU (in cores) other processes used during the timing, read from /proc/stat; blocks above 0.25 cores",
        "were retaken. This machine is shared: whole runs drift by up to 30% with no outside load visible.",
        "'Runtime start' is a fresh process importing Kiln's runtime alone, loading the tuned artifact and running it",
        "once; 'runtime RSS' is that process's peak resident memory (VmHWM).",
        "Regenerate with `make bench` (or `.venv/bin/python -m benchmarks.run`).",
        "",
        "| model | tuned kernels | Kiln tuned ms | Kiln untuned ms | ORT ms | tuned / ORT | range | untuned / ORT "
        "| range | outputs match | outside load | compile s | artifact MB | runtime start s | runtime RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        k, o, u = r["kiln"], r["onnxruntime"], r["untuned"]
        load = max(k["outside_load_cores"], o["outside_load_cores"], u["kiln"]["outside_load_cores"])
        match = r["outputs_match"] and u["outputs_match"]
        lines.append(f"| {r['model']} | {r['tuned_kernels']}/{r['kernels']} | {k['median_ms']:.2f} | "
                     f"{u['kiln']['median_ms']:.2f} | {o['median_ms']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['round_ratios'][0]:.2f}-{r['round_ratios'][-1]:.2f} | {u['ratio']:.2f}x | "
                     f"{u['round_ratios'][0]:.2f}-{u['round_ratios'][-1]:.2f} | {'yes' if match else 'NO'} | "
                     f"{load:.2f} | {r['compile_s']:.1f} | {r['artifact_mb']:.1f} | "
                     f"{r['runtime_first_result_s']:.2f} | {r['runtime_peak_rss_mb']} |")
    return "\n".join(lines + tuning_section()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Kiln vs ONNX Runtime on the zoo models.")
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS, help=f"from: {', '.join(sorted(ZOO))}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per engine (in 4 alternating blocks)")
    parser.add_argument("--rounds", type=int, default=3, help="comparisons per model; the median ratio is reported")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(ZOO))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)} (known: {', '.join(sorted(ZOO))})")
    import onnxruntime  # noqa: PLC0415
    import tvm  # noqa: PLC0415

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "threads": args.threads, "kiln": runtime.__version__, "tvm": tvm.__version__,
            "ort": onnxruntime.__version__}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        for name in args.models:
            row = bench_model(name, Path(tmp), args.threads, args.repeat, args.rounds)
            rows.append(row)
            rounds = ", ".join(f"{r:.2f}" for r in row["round_ratios"])
            print(f"{name:<12} tuned {row['kiln']['median_ms']:8.2f} ms  "
                  f"untuned {row['untuned']['kiln']['median_ms']:8.2f} ms  "
                  f"ort {row['onnxruntime']['median_ms']:8.2f} ms  tuned/ort {row['ratio']:.2f}x (rounds {rounds})  "
                  f"untuned/ort {row['untuned']['ratio']:.2f}x  tuned kernels {row['tuned_kernels']}/{row['kernels']}",
                  flush=True)
    if not args.no_write:
        atomic_write(HERE / "RESULTS.md", to_markdown(rows, meta))
        atomic_write(HERE / "results.json", json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
