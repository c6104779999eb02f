"""`kiln run`: an artifact on inputs from files (or random ones) -> a summary of each output, or an .npz."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from runtime.errors import KilnError

from .main import main


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
@click.option("--profile", is_flag=True, help="Also time each fused kernel inside whole runs and alone (warm in cache); list the top 10.")
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
    from runtime.profile import profile_kernels, time_in_runs  # noqa: PLC0415

    dims = {d: size for spec in model.inputs for d, size in zip(spec.shape, np.shape(feeds[spec.name]))
            if isinstance(d, str)}
    alone = {t.kernel: t for t in profile_kernels(model, dims)}
    in_runs = time_in_runs(model, feeds)  # also host-side functions (shape_func) that the manifest does not list
    total = sum(in_runs.values()) or 1.0
    click.echo(f"kernels: {len(in_runs)}, {sum(in_runs.values()):.3f} ms a run inside whole runs, "
               f"{sum(t.ms_per_run for t in alone.values()):.3f} ms timed alone (warm in cache); top 10:")
    click.echo(f"{'share':>6} {'in run':>8} {'alone':>8} {'calls':>5}  kernel (ms a run)")
    for kernel, ms in sorted(in_runs.items(), key=lambda item: -item[1])[:10]:
        timed = alone.get(kernel)
        click.echo(f"{ms / total:>6.1%} {ms:>8.3f} {f'{timed.ms_per_run:.3f}' if timed else '-':>8} "
                   f"{timed.calls if timed else '-':>5}  {kernel}")
