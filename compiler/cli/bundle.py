"""`kiln bundle`: an artifact + TVM's runtime libraries + kiln-run, in a folder for the board."""

from __future__ import annotations

import click

from .main import main


@main.command("bundle")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write (created if missing).")
def bundle_cmd(artifact, out_dir):
    """Pack ARTIFACT with TVM's runtime libraries for its architecture and the C++ runner `kiln-run`: a folder
    that runs the model on its board without Python."""
    from ..build.bundle import bundle  # noqa: PLC0415

    made = bundle(artifact, out_dir)
    for path in made.files:
        click.echo(f"  {path.name:<24} {path.stat().st_size / 1e6:6.2f} MB")
    click.echo(f"wrote {made.folder} ({made.size_mb:.1f} MB); on the board: cd {made.folder.name} && {made.command}")
