"""The default ONNX domain and the opset a model imports it at: one definition for the frontend's rewrites."""

from __future__ import annotations

import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default domain MODEL imports (1 when it lists none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)
