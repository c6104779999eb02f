"""`kiln bench`: an artifact (or a model compiled on the spot) timed beside ONNX Runtime / OpenVINO."""

from __future__ import annotations

import json

import click

from .main import main, progress_line


@main.command("bench")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model", "onnx_model", type=click.Path(dir_okay=False),
              help="The ONNX model for ONNX Runtime (default: the artifact's source model beside it).")
@click.option("--against", default="onnxruntime", show_default=True,
              help="Engines to compare with, comma-separated: onnxruntime, openvino (its default precision), "
                   "openvino-f32; or none.")
@click.option("--target", "-t", default="auto", show_default=True, help="Target when PATH is an ONNX model.")
@click.option("--threads", type=int, default=2, show_default=True,
              help="Threads of every engine (Kiln and the others).")
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed runs per engine.")
@click.option("--batch", type=int, default=1, show_default=True, help="Value of dynamic dims (batch).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_cmd(path, onnx_model, against, target, threads, repeat, batch, as_json):
    """Latency (median, p90) and throughput of an artifact or ONNX model, beside ONNX Runtime (and OpenVINO) on the
    same inputs."""
    from ..bench import bench  # noqa: PLC0415

    result = bench(path, onnx_model, against, target, threads, repeat, batch, progress=progress_line)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from ..bench import to_text  # noqa: PLC0415

    click.echo(to_text(result))
