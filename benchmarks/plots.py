"""The PNG plots of RESULTS.md (matplotlib, no display needed): latency by model and engine, GFLOP/s against the
measured peak, and the tuning curve. Each is written atomically; each returns its path, or None with nothing to
plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from runtime.atomic import atomic_path  # noqa: E402

from .report import at_batch, engine_label  # noqa: E402


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _colors(rows: list[dict]) -> dict[str, str]:
    """One color per engine, the same in every panel and plot."""
    names = list(dict.fromkeys(e for row in rows for batch in row["batches"].values() for e in batch["engines"]))
    return {name: f"C{i}" for i, name in enumerate(names)}


def latency_plot(report: dict, path: Path) -> Path | None:
    """Grouped bars, one panel per batch size: each engine's latency over ONNX Runtime fp32's, per model."""
    rows = report["results"]
    # only batches some model ran at: the real models run at batch 1 only
    batches = [str(b) for b in report["meta"]["batches"] if at_batch(rows, str(b))]
    if not rows or not batches:
        return None
    colors = _colors(rows)
    figure, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.2), squeeze=False)
    all_rows = rows
    for axis, batch in zip(axes[0], batches):
        rows = at_batch(all_rows, batch)
        found = {e: f for row in rows for e, f in row["batches"][batch]["engines"].items()}
        engines = list(found)
        width = 0.8 / len(engines)
        for i, engine in enumerate(engines):
            ratios = [row["batches"][batch]["engines"].get(engine, {"ratio": 0.0})["ratio"] for row in rows]
            label = engine_label(engine, found[engine])
            axis.bar([m + (i - (len(engines) - 1) / 2) * width for m in range(len(rows))], ratios, width, label=label,
                     color=colors[engine])
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(rows)), [row["model"] for row in rows], rotation=30, ha="right")
        axis.set_ylabel("latency / ONNX Runtime fp32 (lower is faster)")
        axis.set_title(f"batch {batch}, {report['meta']['threads']} threads")
        axis.legend(fontsize=8)
    return _save(figure, path)


def roofline_plot(report: dict, path: Path) -> Path | None:
    """Each engine's GFLOP/s on each model (batch 1 hollow, larger batches filled) against the model's GFLOP per
    inference, with the measured fp32 sgemm peak as a line."""
    rows, meta = report["results"], report["meta"]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    colors = _colors(rows)
    for batch in map(str, meta["batches"]):
        measured = at_batch(rows, batch)
        for engine in dict.fromkeys(e for row in measured for e in row["batches"][batch]["engines"]):
            points = [(row["batches"][batch]["gflop"], row["batches"][batch]["gflop"] /
                       (row["batches"][batch]["engines"][engine]["median_ms"] / 1000))
                      for row in measured if engine in row["batches"][batch]["engines"]]
            axis.scatter([p[0] for p in points], [p[1] for p in points], s=36, color=colors[engine],
                         facecolors="none" if batch == "1" else colors[engine],
                         label=f"{engine}, batch {batch}")
    axis.axhline(meta["peak_gflops"], color="black", linestyle="--", linewidth=0.9,
                 label=f"fp32 sgemm peak ({meta['peak_gflops']:.0f} GFLOP/s)")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_ylim(bottom=0)
    axis.set_xlabel("GFLOP per inference (model's convolutions and matmuls)")
    axis.set_ylabel("GFLOP/s reached")
    axis.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def tuning_curve_plot(summary: Path, path: Path) -> Path | None:
    """The searched kernels' time against minutes of tuning, from a `kiln tune --json` summary's curve."""
    if not summary.is_file():
        return None
    curve = json.loads(summary.read_text()).get("curve") or []
    if len(curve) < 2:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    minutes = [p["seconds"] / 60 for p in curve]
    axis.plot(minutes, [p["searched_kernels_ms"] for p in curve], marker=".", label="best so far")
    best = min(p["searched_kernels_ms"] for p in curve)
    axis.axhline(best * 1.1, color="grey", linestyle="--", linewidth=0.8, label="10% above the best")
    axis.set_xlabel("minutes of tuning")
    axis.set_ylabel("searched kernels, ms per inference")
    axis.set_title(summary.stem)
    axis.legend(fontsize=8)
    return _save(figure, path)


def shape_sweep_plot(sweep: dict, path: Path) -> Path | None:
    """Two bars per swept shape (benchmarks/shape_sweep.py) over ONNX Runtime's whole run: Kiln's whole single-op
    model (light) and Kiln's compute alone (dark); matmuls and convolutions in two panels, with lines at 1.0 and
    at the issue's 1.5 bound."""
    kinds = list(dict.fromkeys(p["kind"] for p in sweep["points"]))
    if not kinds:
        return None
    counts = [sum(p["kind"] == k for p in sweep["points"]) for k in kinds]
    figure, axes = plt.subplots(1, len(kinds), figsize=(0.45 * sum(counts) + 2, 5.4), squeeze=False,
                                gridspec_kw={"width_ratios": counts})
    for axis, kind in zip(axes[0], kinds):
        points = [p for p in sweep["points"] if p["kind"] == kind]
        spots = range(len(points))
        axis.bar([i - 0.2 for i in spots], [p["ratio"] for p in points], 0.4, color="C0", alpha=0.35,
                 label="Kiln whole model")
        axis.bar([i + 0.2 for i in spots], [p["compute_ratio"] for p in points], 0.4, color="C0",
                 label="Kiln compute alone")
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.axhline(1.5, color="C3", linestyle="--", linewidth=0.8)
        axis.set_xticks(list(spots), [p["shape"] for p in points], rotation=60, ha="right", fontsize=7)
        axis.set_title(f"{kind}: Kiln untuned / ONNX Runtime, {sweep['threads']} threads, batch 1", fontsize=9)
        axis.set_ylim(0, max(1.6, max(max(p["ratio"], p["compute_ratio"]) for p in points) * 1.1))
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("latency ratio (lower is faster)")
    figure.suptitle(f"{sweep['date']}, {sweep['machine']}", fontsize=8)
    return _save(figure, path)
