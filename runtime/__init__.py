"""Kiln's thin runtime: load a compiled artifact and run it with numpy in and out.

It imports TVM's runtime alone (never the compiler, onnx or xgboost), so an edge application needs nothing else.
"""

from .artifact import Manifest, TensorSpec, read_manifest, verify
from .errors import KilnError
from .model import Model, load

__all__ = ["KilnError", "Manifest", "Model", "TensorSpec", "load", "read_manifest", "verify"]
__version__ = "0.1.0"
