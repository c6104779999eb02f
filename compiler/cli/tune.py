"""`kiln tune`: flags -> compiler.tuning.search.tune -> a summary line (or --json)."""

from __future__ import annotations

import json
import sys

import click

from .main import main


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
@click.option("--cache", type=click.Choice(["cold", "warm"]), default="cold", show_default=True,
              help="Time candidates with their weights flushed from the CPU caches, as a batch-1 run meets them "
                   "(cold), or repeated with everything cached (warm: small models, large batches). Kernels "
                   "tuned the other way have their best records re-timed, and their search goes on from those.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary at the end.")
def tune_cmd(model, target, trials, minutes, log_dir, workers, threads, rpc, key, devices, input_shape, keep,
             recheck, cache, as_json):
    """Search faster schedules for MODEL's kernels on TARGET; records go to the target's tuning log, which
    `kiln compile` applies. Resumable: run it again to continue where it stopped (Ctrl-C is safe)."""
    from .. import frontend  # noqa: PLC0415
    from ..tuning.progress import TuneDisplay  # noqa: PLC0415
    from ..tuning.tune import tune  # noqa: PLC0415

    display = TuneDisplay(sys.stderr, minutes)
    summary = tune(model, target=target, trials=trials, minutes=minutes, log_dir=log_dir, workers=workers,
                        threads=threads, rpc=rpc, key=key, devices=devices, keep=keep, recheck=recheck,
                        cache=cache,
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
