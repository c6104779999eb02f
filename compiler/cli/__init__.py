"""The `kiln` command line: each command parses its flags, calls one API function and prints the result.

`kiln` (the console script) is `main`; importing this package registers every command on it. Commands import
the compiler only when they run, so `kiln run`, `kiln serve` and `kiln targets` stay on TVM's runtime alone.
"""

from . import bench, bundle, compile, inspect, run, serve, tune  # noqa: F401 - registers the commands
from .main import main

__all__ = ["main"]
