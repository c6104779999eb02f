"""Kiln's compiler: ONNX model -> graph passes -> scheduled kernels -> one shared library per target.

The folders, in the order a model goes through them:
    frontend/    ONNX file -> Relax module
    passes/      graph passes, one file each (pipeline.py lists them, stage by stage)
    quantize/    int8 / bf16 versions of the graph, and the choice between them and float32
    kernels/     Kiln's kernel computes (packed weights, Winograd, dot products)
    schedules/   Kiln's default CPU schedules of those kernels (and of TVM's)
    tuning/      `kiln tune`: searched schedules in tuning_logs/
    build/       schedule, lower, export; the manifest; `kiln bundle`
    cli/         the `kiln` command line
driver.py (compile), options.py, pipeline.py and targets.py tie them together; bench.py + references.py are
`kiln bench`, describe.py is `kiln inspect`.
"""

from runtime.errors import KilnError

__all__ = ["Artifact", "KilnError", "compile"]


def __getattr__(name: str):
    # `compile` and `Artifact` load the whole TVM compiler on first use, not on `import compiler`: the CLI's
    # `kiln serve` / `kiln run` then run on TVM's runtime alone (0.45 s and ~80 MB instead of 0.7 s and ~200 MB).
    if name in ("compile", "Artifact"):
        from . import driver  # noqa: PLC0415

        return getattr(driver, name)
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")
