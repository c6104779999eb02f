"""`kiln compile`: flags -> compiler.compile -> one line about the artifact."""

from __future__ import annotations

import click

from .main import main, progress_line


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="auto", show_default=True,
              help="Name from `kiln targets`; 'auto' picks the best preset for this machine.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Artifact path (default: MODEL.TARGET.so).")
@click.option("--input-shape", multiple=True, metavar="NAME=DxD..", help="Fix an input's dynamic dims.")
@click.option("--input-value", multiple=True, metavar="NAME=V,V..",
              help="Fix an input to a value (one that decides shapes or axes, e.g. a Reduce's axes); it leaves the "
                   "artifact's inputs.")
@click.option("--tuning-log", metavar="DIR|none", help="Tuning database folder (default tuning_logs/TARGET).")
@click.option("--layout", type=click.Choice(["NHWC", "NCHW"]), default="NHWC", show_default=True,
              help="Convolution layout: NHWC suits Kiln's CPU schedules; NCHW keeps the model's.")
@click.option("--dump", "dump", nargs=2, metavar="KINDS DIR",
              help="Write intermediate forms (comma list of relax,tir,ll,asm) into DIR.")
@click.option("--pass-times", is_flag=True, help="Print the time each compiler pass took.")
@click.option("--quantize", type=click.Choice(["none", "int8", "auto"]), default="none", show_default=True,
              help="int8: convolutions and matmuls in int8 (post-training quantization; needs VNNI); auto: int8, "
                   "unless a float32 build runs faster on this machine.")
@click.option("--calibration", metavar="DIR|random:N",
              help="Calibration samples for --quantize: a folder of .npy/.npz, or N random inputs (default random:32).")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="How activation ranges are chosen from the calibration samples.")
@click.option("--max-accuracy-drop", type=float, metavar="X",
              help="Largest accepted drop vs float32 on held-back samples (1 - top-1 agreement, or 1 - cosine); "
                   "above it the most sensitive layers fall back to float32, and compile fails if that is not enough.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: convolutions and matmuls with bf16 weights and activations, float32 sums (needs AMX).")
@click.option("--winograd/--no-winograd", default=True, show_default=True,
              help="3x3 stride-1 convolutions as Winograd F(4x4,3x3) or F(2x2,3x3) where it pays: fewer multiplies, outputs within "
                   "a few 1e-5 (relative) of a direct convolution's; --no-winograd keeps them all direct.")
def compile_cmd(model, target, output, input_shape, input_value, tuning_log, layout, dump, pass_times, quantize, calibration,
                calibration_method, max_accuracy_drop, precision, winograd):
    """Compile MODEL (ONNX) for TARGET into one shared library with its manifest."""
    from .. import driver, frontend  # noqa: PLC0415 - `kiln targets` and `kiln run` stay light
    from ..build.dump import parse_kinds  # noqa: PLC0415

    kinds, dump_dir = (parse_kinds(dump[0]), dump[1]) if dump else ((), None)
    artifact = driver.compile(model, target=target, output=output,
                              input_shapes=frontend.parse_shape_overrides(input_shape),
                              input_values=frontend.parse_input_values(input_value),
                              tuning_log=tuning_log, layout=layout, progress=progress_line,
                              dump_dir=dump_dir, dump_kinds=kinds, pass_times=pass_times,
                              quantize=None if quantize == "none" else quantize, calibration=calibration,
                              calibration_method=calibration_method, max_accuracy_drop=max_accuracy_drop,
                              precision=precision, winograd=winograd)
    if artifact.pass_times:
        click.echo(artifact.pass_times)
    for path in artifact.dumped:
        click.echo(f"dumped {path}")
    m = artifact.manifest
    # the tuned count shows a model whose kernels the committed records no longer match (a graph change makes a
    # kernel a new workload: `kiln tune` the model again)
    counts = m.kernels
    total = counts["tuned"] + counts["default_rule"] + counts["unscheduled"]
    click.echo(f"wrote {artifact.path} ({artifact.size_mb:.1f} MB, target {m.target}, "
               f"{m.compile_seconds:.1f} s, {counts['tuned']} of {total} kernel(s) from tuning records, "
               f"{counts['unscheduled']} on naive schedules)")
