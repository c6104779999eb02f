"""`kiln inspect`: an artifact's manifest, or what Kiln makes of an ONNX model before compiling it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from runtime.artifact import MAGIC, UNSEALED_MAGIC, read_manifest

from . import frontend


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_nodes(attr.g)


def describe_model(path: str | Path) -> dict:
    """A JSON-ready report of the ONNX model at PATH (raises KilnError when it cannot be read)."""
    loaded = frontend.load_model(path)
    counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                     for n in _all_nodes(loaded.proto.graph))
    unsupported = frontend.unsupported_ops(loaded.proto)
    dynamic = sorted({d for spec in loaded.inputs for d in spec.shape if isinstance(d, str)})
    suggested, guessed = [], set()
    for spec in loaded.inputs:
        if any(isinstance(d, str) for d in spec.shape):
            dims, why = suggest_shape(spec)
            suggested.append(f"{spec.name}={'x'.join(map(str, dims))}")
            guessed |= why
    outputs = [frontend.tensor_spec(v) for v in loaded.proto.graph.output]
    return {
        "kind": "model",
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "opset": loaded.opset,
        "inputs": [vars(s) for s in loaded.inputs],
        "outputs": [vars(s) for s in outputs],
        "operators": [{"op": op, "count": n, "supported": op not in unsupported} for op, n in sorted(counts.items())],
        "unsupported": sorted(unsupported),
        "dynamic_dims": dynamic,
        "suggested_input_shape": suggested,
        "suggestion_basis": sorted(guessed),
        "parameters": int(sum(_numel(t.dims) for t in loaded.proto.graph.initializer)),
    }


IMAGE_SIDE = 224  # the usual input side of image classifiers, suggested where the model leaves H and W open
SEQUENCE = 128  # a usual sequence length, suggested for token inputs


def suggest_shape(spec) -> tuple[list[int], set[str]]:
    """A concrete shape for the input SPEC's dynamic dims, and what the guess rests on: 1 for a leading (batch)
    dim, 224 for the height and width of an NCHW image (rank 4 with 1, 3 or 4 channels), 128 for the sequence of
    an integer (token) input, else 1."""
    dims, why = [], set()
    image = len(spec.shape) == 4 and spec.shape[1] in (1, 3, 4) and spec.dtype.startswith("float")
    for i, d in enumerate(spec.shape):
        if isinstance(d, int):
            dims.append(d)
        elif i == 0:
            dims.append(1)
            why.add("batch 1")
        elif image and i in (2, 3):
            dims.append(IMAGE_SIDE)
            why.add(f"{IMAGE_SIDE}x{IMAGE_SIDE}: a common image size, not read from the model")
        elif spec.dtype.startswith("int") and i == 1:
            dims.append(SEQUENCE)
            why.add(f"{SEQUENCE} tokens: a common sequence length, not read from the model")
        else:
            dims.append(1)
    return dims, why


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def is_artifact(path: str | Path) -> bool:
    """True when PATH ends with a Kiln manifest trailer."""
    try:
        with open(path, "rb") as f:
            f.seek(-len(MAGIC), 2)
            return f.read() in (MAGIC, UNSEALED_MAGIC)
    except OSError:
        return False


def describe(path: str | Path) -> dict:
    """The inspect report of PATH: an artifact's manifest, or a model report for an ONNX file."""
    if is_artifact(path):
        manifest = read_manifest(path)
        return {"kind": "artifact", "path": str(path), "size_bytes": Path(path).stat().st_size,
                "manifest": json.loads(manifest.to_json())}
    return describe_model(path)


def _spec_text(spec: dict) -> str:
    return f"{spec['name']}: {spec['dtype']}[{'x'.join(map(str, spec['shape'])) or 'scalar'}]"


def _runs_on(manifest: dict) -> str:
    """'aarch64 CPU', or 'CUDA sm_80 GPU (x86_64 host): 1 cubin sm_80' from a manifest."""
    device = manifest.get("device", "cpu")
    if device == "cpu":
        features = manifest["cpu_features"]
        return f"{manifest['arch']} CPU" + (f" with {', '.join(features)}" if features else "")
    code = manifest.get("extra", {}).get("device_code", [])
    kinds = Counter(f"{c['kind']} {c['arch']}" for c in code)
    return (f"{device.upper()} {manifest['tvm_target'].get('arch', '')} GPU ({manifest['arch']} host), device code: "
            + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"))


def _weights_text(weights: dict | None) -> str:
    """'12 tensors, 3.4 MB beside the library (mapped at load)', or where an older artifact keeps them."""
    if not weights:
        return "all in the library (format 2, or none of 4 KB or more)"
    return f"{len(weights['tensors'])} tensors, {weights['bytes'] / 1e6:.1f} MB beside the library (mapped at load)"


def to_text(report: dict) -> str:
    """Human-readable form of a describe() report."""
    if report["kind"] == "artifact":
        m = report["manifest"]
        k = m["kernels"]
        lines = [
            f"artifact   {report['path']} ({report['size_bytes'] / 1e6:.1f} MB, format {m['format_version']})",
            f"model      {m['source_model']} (sha256 {m['source_sha256'][:12]})",
            f"target     {m['target']} {json.dumps(m['tvm_target'])}",
            f"runs on    {_runs_on(m)}",
            f"inputs     {', '.join(map(_spec_text, m['inputs']))}",
            f"outputs    {', '.join(map(_spec_text, m['outputs']))}",
            f"kernels    {k['tuned']} tuned, {k['default_rule']} default rule, {k['unscheduled']} naive",
            f"tuning     {m['tuning']['database'] or 'no database'} ({m['tuning']['records']} records)",
            f"quantized  {m['quantization'] or 'no (fp32)'}",
            f"weights    {_weights_text(m.get('weights'))}",
            f"built      {m['created']} with Kiln {m['kiln_version']}, TVM {m['tvm_version']} "
            f"in {m['compile_seconds']} s",
            f"passes     {', '.join(m['passes'])}",
        ]
        return "\n".join(lines)
    lines = [f"model      {report['path']} (opset {report['opset']}, {report['parameters']:,} parameters)",
             f"inputs     {', '.join(map(_spec_text, report['inputs']))}",
             f"outputs    {', '.join(map(_spec_text, report['outputs']))}"]
    if report["dynamic_dims"]:
        lines.append(f"dynamic    {', '.join(report['dynamic_dims'])} (kept symbolic; to fix them: "
                     f"{' '.join('--input-shape ' + s for s in report['suggested_input_shape'])})")
        if report["suggestion_basis"]:
            lines.append(f"           suggested: {'; '.join(report['suggestion_basis'])}")
    lines.append("operators")
    for op in report["operators"]:
        lines.append(f"  {op['op']:<24} {op['count']:>5}  {'ok' if op['supported'] else 'UNSUPPORTED'}")
    return "\n".join(lines)
