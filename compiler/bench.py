"""`kiln bench`: an artifact (or a model compiled on the spot) beside ONNX Runtime, on the same inputs."""

from __future__ import annotations

import platform
from pathlib import Path

import runtime
from runtime.bench import Comparison, Engine, compare_engines, computes_in, random_inputs
from runtime.errors import KilnError
from runtime.scratch import scratch_dir

from .describe import is_artifact
from .references import check_engines, open_reference


def _onnx_for(artifact: Path, manifest, given: str | None) -> str:
    if given:
        if not Path(given).is_file():
            raise KilnError(f"ONNX model not found: {given}", "pass the model the artifact was compiled from")
        return given
    beside = artifact.parent / manifest.source_model
    if beside.is_file():
        return str(beside)
    raise KilnError(f"cannot find {manifest.source_model} beside {artifact} for ONNX Runtime",
                    "pass it with --model, or use --against none")


def parse_against(text: str) -> tuple[str, ...]:
    """The engines of `--against` ('onnxruntime,openvino'; 'none' for Kiln alone), checked against the known ones."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    check_engines(names)
    return names


def compare(model, onnx_path: str | None, threads: int, repeat: int = 20, warmup: int = 3,
            dims: dict[str, int] | None = None, batch: int = 1, against: tuple[str, ...] = ("onnxruntime",)) \
        -> Comparison:
    """Time the loaded Kiln MODEL beside the reference engines AGAINST (opened on ONNX_PATH with THREADS
    threads) on the same seeded inputs; ratios are to ONNX Runtime when it is among them, else to the first."""
    feeds = random_inputs(model.inputs, dims)
    engines = [Engine("kiln", model.run, computes_in(model.manifest))]
    if onnx_path is not None:
        shapes = {name: array.shape for name, array in feeds.items()}
        outputs = [o.name for o in model.outputs]
        engines += [open_reference(name, onnx_path, threads, shapes, outputs) for name in against]
    names = [e.name for e in engines[1:]]
    reference = "onnxruntime" if "onnxruntime" in names else (names[0] if names else None)
    return compare_engines(engines, feeds, reference, repeat, warmup, batch)


def bench(path: str, onnx_model: str | None = None, against: str = "onnxruntime", target: str = "auto",
          threads: int = 2, repeat: int = 20, batch: int = 1, progress=None) -> dict:
    """Benchmark PATH (artifact or ONNX model) beside the engines named in AGAINST (comma-separated) and return
    the stable JSON report."""
    engines = parse_against(against)
    with scratch_dir("kiln-bench-") as tmp:
        artifact = Path(path)
        if not is_artifact(artifact):
            from .driver import compile as compile_model  # noqa: PLC0415

            onnx_model = onnx_model or path
            artifact = compile_model(path, target=target, output=Path(tmp) / "model.so", progress=progress).path
        model = runtime.load(artifact, threads=threads)
        reference = _onnx_for(artifact, model.manifest, onnx_model) if engines else None
        dims = {d: batch for spec in model.inputs for d in spec.shape if isinstance(d, str)}
        if progress:
            progress(f"timing {repeat} runs per engine on {threads} thread(s)")
        result = compare(model, reference, threads, repeat, dims=dims, batch=batch, against=engines)
    return {"model": model.manifest.source_model, "target": model.manifest.target, "threads": threads,
            "batch": batch, "machine": platform.machine(), **result.to_json()}


def to_text(result: dict) -> str:
    """Side-by-side table of a bench() report."""
    engines = result["engines"]
    reference = result["reference"]
    width = max(14, *(len(name) for name in engines))
    lines = [f"{result['model']} on {result['target']}, {result['threads']} thread(s), batch {result['batch']}",
             f"{'engine':<{width}} {'precision':<9} {'median ms':>10} {'p90 ms':>10} {'per s':>10}"
             + (f" {'vs ' + reference:>16}  outputs" if reference else "")]
    for name, t in engines.items():
        line = (f"{name:<{width}} {t['precision']:<9} {t['median_ms']:>10.3f} {t['p90_ms']:>10.3f} "
                f"{t['throughput_per_s']:>10.1f}")
        if reference:
            verdict = "match" if t["outputs_match"] else "DIFFER"
            line += f" {t['ratio']:>15.2f}x  {verdict} (max abs error {t['max_abs_error']:.3g})"
        lines.append(line)
    if result["ratio"] is not None:
        lines.append(f"kiln / {reference} latency: {result['ratio']:.2f}x")
        lines.append("outputs match" if result["outputs_match"] else "OUTPUTS DIFFER")
    loads = [t["outside_load_cores"] for t in engines.values()]
    if max(loads) > 0.25:
        lines.append(f"warning: other processes used up to {max(loads):.2f} cores during timing; figures are noisy")
    return "\n".join(lines)
