"""docs/cli.md from the click help of every command: `python -m compiler.cli.reference > docs/cli.md` (or
`make docs`). A test checks that the committed file matches, so the reference cannot drift from the flags."""

from __future__ import annotations

import click

from . import main

WIDTH = 110  # help text is wrapped at this width, whatever the terminal, so the file is the same everywhere


def command_help(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    """The --help text of COMMAND as `kiln NAME --help` prints it."""
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH)
    return ctx.get_help()


def reference() -> str:
    """The Markdown command reference: the group's help, then each command's, in the order `kiln --help` lists."""
    root = click.Context(main, info_name="kiln", terminal_width=WIDTH, max_content_width=WIDTH,
                         show_default=True)
    parts = ["# Command reference", "",
             "Generated from `kiln --help` and each command's `--help` by `make docs` "
             "(`python -m compiler.cli.reference`); do not edit by hand.", "",
             "```", root.get_help(), "```"]
    for name in main.list_commands(root):
        parts += ["", f"## kiln {name}", "", "```", command_help(main.get_command(root, name), name, root), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    click.echo(reference(), nl=False)
