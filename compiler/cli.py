"""The `kiln` command line: parse flags, call one API function, print the result."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
import numpy as np

from runtime.errors import KilnError


class KilnGroup(click.Group):
    """Prints a KilnError (or any failure) as one line and exits non-zero; --debug shows the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # the reader (`| head`) has gone: stop quietly, as the Python docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except Exception as err:  # noqa: BLE001 - the one place that turns failures into a line
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if isinstance(err, KilnError):
                click.echo(f"error: {err}", err=True)
                sys.exit(1)
            first = (str(err).strip().splitlines() or [""])[0][:300]
            click.echo(f"error: internal error: {type(err).__name__}: {first} (rerun with --debug for the trace)",
                       err=True)
            sys.exit(2)


@click.group(cls=KilnGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show progress logs.")
@click.pass_context
def main(ctx, debug, verbose):
    """Kiln: compile ONNX models into fast shared libraries, and run them."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="auto", show_default=True,
              help="Name from `kiln targets`; 'auto' picks the best preset for this machine.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Artifact path (default: MODEL.TARGET.so).")
@click.option("--input-shape", multiple=True, metavar="NAME=DxD..", help="Fix an input's dynamic dims.")
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
              help="3x3 stride-1 convolutions as Winograd F(4x4,3x3) where it pays: fewer multiplies, outputs within "
                   "a few 1e-5 (relative) of a direct convolution's; --no-winograd keeps them all direct.")
def compile_cmd(model, target, output, input_shape, tuning_log, layout, dump, pass_times, quantize, calibration,
                calibration_method, max_accuracy_drop, precision, winograd):
    """Compile MODEL (ONNX) for TARGET into one shared library with its manifest."""
    from . import driver, frontend  # noqa: PLC0415 - `kiln targets` and `kiln run` stay light
    from .dump import parse_kinds  # noqa: PLC0415

    kinds, dump_dir = (parse_kinds(dump[0]), dump[1]) if dump else ((), None)
    artifact = driver.compile(model, target=target, output=output,
                              input_shapes=frontend.parse_shape_overrides(input_shape),
                              tuning_log=tuning_log, layout=layout, progress=_progress,
                              dump_dir=dump_dir, dump_kinds=kinds, pass_times=pass_times,
                              quantize=None if quantize == "none" else quantize, calibration=calibration,
                              calibration_method=calibration_method, max_accuracy_drop=max_accuracy_drop,
                              precision=precision, winograd=winograd)
    if artifact.pass_times:
        click.echo(artifact.pass_times)
    for path in artifact.dumped:
        click.echo(f"dumped {path}")
    m = artifact.manifest
    click.echo(f"wrote {artifact.path} ({artifact.size_mb:.1f} MB, target {m.target}, "
               f"{m.compile_seconds:.1f} s, {m.kernels['unscheduled']} kernel(s) on naive schedules)")


@main.command("tune")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="auto", show_default=True, help="Name from `kiln targets`.")
@click.option("--trials", type=int, help="Candidates to measure in all (default: the preset's trials per kernel).")
@click.option("--minutes", type=float, help="Stop after this much wall time (with --trials: whichever comes first).")
@click.option("--log", "log_dir", type=click.Path(file_okay=False),
              help="Database folder (default tuning_logs/TARGET).")
@click.option("--workers", type=int, help="Processes building candidates (default: one per core).")
@click.option("--threads", type=int, help="Threads each candidate runs with (default: all cores, as `kiln run`).")
@click.option("--rpc", metavar="HOST:PORT", help="Measure on boards registered with this TVM RPC tracker.")
@click.option("--key", help="Device key of the boards (with --rpc).")
@click.option("--devices", type=int, default=1, show_default=True, help="Boards to measure on at once (with --rpc).")
@click.option("--input-shape", multiple=True, metavar="NAME=DxD..", help="Fix an input's dynamic dims.")
@click.option("--keep", type=int, help="Records kept per kernel afterwards (default: the preset's, 4).")
@click.option("--recheck", is_flag=True,
              help="Search nothing: re-time each tuned kernel's best record against Kiln's current default "
                   "schedule and keep the faster (after upgrading Kiln).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary at the end.")
def tune_cmd(model, target, trials, minutes, log_dir, workers, threads, rpc, key, devices, input_shape, keep,
             recheck, as_json):
    """Search faster schedules for MODEL's kernels on TARGET; records go to the target's tuning log, which
    `kiln compile` applies. Resumable: run it again to continue where it stopped (Ctrl-C is safe)."""
    from . import frontend, tune  # noqa: PLC0415
    from .tune_progress import TuneDisplay  # noqa: PLC0415

    display = TuneDisplay(sys.stderr, minutes)
    summary = tune.tune(model, target=target, trials=trials, minutes=minutes, log_dir=log_dir, workers=workers,
                        threads=threads, rpc=rpc, key=key, devices=devices, keep=keep, recheck=recheck,
                        report=display,
                        input_shapes=frontend.parse_shape_overrides(input_shape))
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=1))
    else:
        default, tuned = summary.model_ms("default_us"), summary.model_ms("best_us")
        label = "with the faster kept:" if summary.stopped == "rechecked" else "searched kernels"
        timing = f"; {label} {default:.3f} ms by default, {tuned:.3f} ms tuned" if default and tuned else ""
        click.echo(f"{summary.stopped}: {summary.trials_run} trial(s) in {summary.seconds:.0f} s, "
                   f"{len(summary.searched)} of {len(summary.tasks)} kernel(s) searched{timing}; "
                   f"{summary.kept} record(s) kept in {summary.database}")
    if summary.stopped == "interrupted":
        sys.exit(130)


def _read_inputs(specs, pairs: tuple[str, ...], random: bool) -> dict:
    from runtime.bench import random_inputs  # noqa: PLC0415

    if not pairs:
        if not random:
            raise KilnError("no inputs given", "pass --input NAME=FILE.npy (or a .npz), or --random")
        return random_inputs(specs)
    feeds = {}
    for pair in pairs:
        name, _, file = pair.rpartition("=")
        path = Path(file)
        if not path.is_file():
            raise KilnError(f"input file not found: {path}", "give an existing .npy or .npz file")
        if path.suffix == ".npz":
            with np.load(path) as archive:
                feeds.update({k: archive[k] for k in archive.files})
        else:
            feeds[name or specs[0].name] = np.load(path)
    return feeds


@main.command("run")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="An input array (or one .npz).")
@click.option("--random", is_flag=True, help="Use seeded random inputs.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write all outputs to this .npz.")
@click.option("--threads", type=int, help="Worker threads (default: all cores).")
@click.option("--profile", is_flag=True, help="Also time each fused kernel alone and list the top 10 by share.")
def run_cmd(artifact, inputs, random, output, threads, profile):
    """Run ARTIFACT on inputs from .npy/.npz files (or --random) and summarise or save the outputs."""
    import io  # noqa: PLC0415

    import runtime  # noqa: PLC0415
    from runtime.atomic import atomic_write  # noqa: PLC0415
    from runtime.tvm_runtime import use_runtime_only  # noqa: PLC0415

    use_runtime_only()
    model = runtime.load(artifact, threads=threads)
    feeds = _read_inputs(model.inputs, inputs, random)
    results = model.run(feeds)
    if profile:
        _print_profile(model, feeds)
    if output:
        buffer = io.BytesIO()
        np.savez(buffer, **results)
        atomic_write(output, buffer.getvalue())
        click.echo(f"wrote {output} ({', '.join(results)})")
        return
    for name, value in results.items():
        flat = value.reshape(-1)
        click.echo(f"{name}: {value.dtype}[{'x'.join(map(str, value.shape))}] min {flat.min():.6g} "
                   f"max {flat.max():.6g} mean {flat.mean():.6g} first {np.array2string(flat[:5], precision=4)}")


def _print_profile(model, feeds: dict) -> None:
    from runtime.profile import profile_kernels  # noqa: PLC0415

    dims = {d: size for spec in model.inputs for d, size in zip(spec.shape, np.shape(feeds[spec.name]))
            if isinstance(d, str)}
    times = profile_kernels(model, dims)
    total = sum(t.ms_per_run for t in times)
    click.echo(f"kernels: {len(times)}, {total:.3f} ms summed (each timed alone, warm); top 10:")
    click.echo(f"{'share':>6} {'ms/run':>8} {'calls':>5}  kernel")
    for t in times[:10]:
        click.echo(f"{t.share:>6.1%} {t.ms_per_run:>8.3f} {t.calls:>5}  {t.kernel}")


@main.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(path, as_json):
    """Show an artifact's manifest, or what Kiln makes of an ONNX model before compiling it."""
    from .report import describe, to_text  # noqa: PLC0415

    report = describe(path)
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else to_text(report))


@main.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets_cmd(as_json):
    """List the target presets (* marks those this machine can run, 'auto' picks the first of them)."""
    from .targets import all_targets, best_for_host  # noqa: PLC0415

    presets = all_targets()
    best = best_for_host().name
    if as_json:
        click.echo(json.dumps([{"name": t.name, "description": t.description, "arch": t.arch, "device": t.device,
                                "tvm_target": t.tvm_target, "compiler": t.compiler,
                                "compiler_installed": t.compiler_installed(),
                                "runs_here": t.runs_here(), "auto": t.name == best} for t in presets.values()],
                              indent=2))
        return
    width = max(map(len, presets))
    for t in presets.values():
        mark = "*" if t.runs_here() else " "
        where = f"{t.arch}{'+' + t.device if t.device != 'cpu' else ''}"
        missing = "" if t.compiler_installed() else f"  [needs {t.compiler}]"
        click.echo(f"{mark} {t.name:<{width}}  {where:<13} {t.description}{'  [auto]' if t.name == best else ''}"
                   f"{missing}")


@main.command("serve")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--threads", type=int, help="TVM worker threads per run (default: all usable CPUs).")
@click.option("--max-batch", type=int, default=1, show_default=True,
              help="Dynamic batching: up to this many rows per run, for models with a symbolic batch dim.")
@click.option("--batch-timeout-ms", type=float, default=2.0, show_default=True,
              help="How long the first request of a batch waits for others.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests queued per model version; beyond it the server answers 503 at once.")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True, help="Largest request body (413).")
@click.option("--request-timeout-s", type=float, default=30.0, show_default=True, help="Per request (504).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Require 'Authorization: Bearer TOKEN'.")
@click.option("--poll-s", type=float, default=5.0, show_default=True,
              help="Rescan the repository this often for new versions (0: only via the load endpoint).")
def serve_cmd(sources, host, port, threads, max_batch, batch_timeout_ms, max_queue, max_body_mb,
              request_timeout_s, token_file, poll_s):
    """Serve SOURCES (artifacts, or a repository folder of NAME/VERSION/model.so) over HTTP with the KServe v2
    protocol, plus /metrics (Prometheus). Stops gracefully on Ctrl-C / SIGTERM."""
    from runtime.serve import ServeOptions, read_token, serve  # noqa: PLC0415 - the runtime alone, no compiler
    from runtime.tvm_runtime import use_runtime_only  # noqa: PLC0415

    use_runtime_only()

    if max_batch < 1 or max_queue < 1 or max_body_mb <= 0 or request_timeout_s <= 0:
        raise KilnError("--max-batch and --max-queue must be at least 1, --max-body-mb and --request-timeout-s "
                        "positive", "fix the option values")
    options = ServeOptions(host=host, port=port, threads=threads, max_batch=max_batch,
                           batch_timeout_ms=batch_timeout_ms, max_queue=max_queue, max_body_mb=max_body_mb,
                           request_timeout_s=request_timeout_s, token=read_token(token_file), poll_s=poll_s)
    serve(list(sources), options, announce=lambda line: click.echo(line, err=True))


@main.command("bundle")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write (created if missing).")
def bundle_cmd(artifact, out_dir):
    """Pack ARTIFACT with TVM's runtime libraries for its architecture and the C++ runner `kiln-run`: a folder
    that runs the model on its board without Python."""
    from .bundle import bundle  # noqa: PLC0415

    made = bundle(artifact, out_dir)
    for path in made.files:
        click.echo(f"  {path.name:<24} {path.stat().st_size / 1e6:6.2f} MB")
    click.echo(f"wrote {made.folder} ({made.size_mb:.1f} MB); on the board: cd {made.folder.name} && {made.command}")


@main.command("bench")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model", "onnx_model", type=click.Path(dir_okay=False),
              help="The ONNX model for ONNX Runtime (default: the artifact's source model beside it).")
@click.option("--against", default="onnxruntime", show_default=True,
              help="Engines to compare with, comma-separated: onnxruntime, openvino (its default precision), "
                   "openvino-f32; or none.")
@click.option("--target", "-t", default="auto", show_default=True, help="Target when PATH is an ONNX model.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed runs per engine.")
@click.option("--batch", type=int, default=1, show_default=True, help="Value of dynamic dims (batch).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_cmd(path, onnx_model, against, target, threads, repeat, batch, as_json):
    """Latency (median, p90) and throughput of an artifact or ONNX model, beside ONNX Runtime (and OpenVINO) on the
    same inputs."""
    from .bench import bench  # noqa: PLC0415

    result = bench(path, onnx_model, against, target, threads, repeat, batch, progress=_progress)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from .bench import to_text  # noqa: PLC0415

    click.echo(to_text(result))


if __name__ == "__main__":
    main()
