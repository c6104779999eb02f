"""The `kiln` group: global flags (--debug, -v, --version) and the one place a failure becomes one line.

Each command lives in a module of its own beside this one (compile.py, tune.py, run.py, inspect.py, serve.py,
bundle.py, bench.py): it turns flags into one call of the API and the result into text.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import platform
import signal
import sys

import click

from runtime import __version__, signals
from runtime.errors import KilnError


# the group's own flags, also taken after the command name: the errors say "rerun with --debug", and users put it
# at the end (`kiln compile model.onnx --debug` answered "No such option: --debug. Did you mean --dump?")
GROUP_FLAGS = ("--debug", "--verbose", "-v")


class KilnGroup(click.Group):
    """Prints a KilnError (or any failure) as one line and exits non-zero; --debug shows the traceback."""

    def parse_args(self, ctx, args):
        """The group's flags (GROUP_FLAGS) anywhere before a `--` count as if given before the command."""
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GROUP_FLAGS]
        return super().parse_args(ctx, flags + [a for a in args[:end] if a not in GROUP_FLAGS] + args[end:])

    def invoke(self, ctx):
        for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind like Ctrl-C, so scratch folders and temp files go
            signal.signal(sig, _exit_on_signal)
        signals.unblock()  # after the handlers: an inherited mask would keep these signals pending forever
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
                line, code = f"error: {err}", 1
            else:
                first = (str(err).strip().splitlines() or [""])[0][:300]
                line, code = f"error: internal error: {type(err).__name__}: {first} (rerun with --debug for the " \
                             "trace)", 2
            _release(err)
        # what the failed attempt left (TVM's block builders, which warn on stderr when freed) goes now, so the
        # error stays the last line
        gc.collect()
        click.echo(line, err=True)
        sys.exit(code)


def _exit_on_signal(signum, _frame) -> None:
    """SIGTERM / SIGHUP: leave through the `with` blocks (they remove what the command made so far), with the
    exit status a shell reports for a process that signal killed."""
    sys.exit(128 + signum)


def _release(err: BaseException) -> None:
    """Drop the frames ERR and the errors behind it hold (their tracebacks are not shown without --debug)."""
    while err is not None:
        behind = err.__cause__ or err.__context__
        err.__traceback__, err.__cause__, err.__context__ = None, None, None
        err = behind


def versions() -> str:
    """Kiln's version and the TVM it compiles with (read from the installed packages: TVM is not imported)."""
    try:
        tvm_version = importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        tvm_version = "not installed"
    return f"kiln {__version__} (apache-tvm {tvm_version}, Python {platform.python_version()})"


def _print_version(ctx, _param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(versions())
        ctx.exit()


# show_default: every command's --help shows each option's default (child contexts inherit it)
@click.group(cls=KilnGroup, context_settings={"show_default": True})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show Kiln's version, the TVM it compiles with, and exit.")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show progress logs.")
@click.pass_context
def main(ctx, debug, verbose):
    """Kiln: compile ONNX models into fast shared libraries, and run them."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def progress_line(message: str) -> None:
    """Print a progress line of a long command on stderr (stdout stays the result)."""
    click.echo(f"  {message}", err=True)
