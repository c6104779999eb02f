"""`kiln inspect` (an artifact's manifest, or an ONNX model before compiling) and `kiln targets` (the presets)."""

from __future__ import annotations

import json

import click

from .main import main


@main.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(path, as_json):
    """Show an artifact's manifest, or what Kiln makes of an ONNX model before compiling it."""
    from ..describe import describe, to_text  # noqa: PLC0415

    report = describe(path)
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else to_text(report))


@main.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets_cmd(as_json):
    """List the target presets (* marks those this machine can run, 'auto' picks the first of them)."""
    from ..targets import all_targets, best_for_host  # noqa: PLC0415

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
