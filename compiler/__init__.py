"""Kiln's compiler: ONNX model -> graph passes -> scheduled kernels -> one shared library per target."""

from runtime.errors import KilnError

from .driver import Artifact, compile  # noqa: A004 - the public API name

__all__ = ["Artifact", "KilnError", "compile"]
