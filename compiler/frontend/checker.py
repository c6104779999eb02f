"""onnx's checker on a model Kiln is asked to compile: its first complaint as one line, run in a child process so
that a model which kills onnx's C++ (a negative GatherND batch_dims segfaults its strict shape inference) is
refused rather than fatal (containment.py).

In: the ModelProto as read. Out: nothing, or a KilnError naming the complaint.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnx

from runtime.errors import KilnError

from .containment import ChildDied, in_child, inference_budget
from .opsets import default_opset

log = logging.getLogger(__name__)


def check_model(model: onnx.ModelProto, path: Path) -> None:
    """Raise the checker's first complaint about MODEL (read from PATH) as a KilnError. A model whose structure is
    valid but whose shapes onnx's strict inference cannot follow (it trips over some ops' own function bodies, e.g.
    MeanVarianceNormalization's) goes on with a warning: its shapes are inferred again, leniently, later."""
    try:
        complaint, inference = in_child(lambda: _findings(model), inference_budget(model))
    except ChildDied as died:
        raise KilnError(f"{path}: onnx's checker died on this model ({died.signal_name}) instead of naming a problem: "
                        "an attribute or shape outside what its op allows (a negative batch_dims, say)",
                        "fix the node's attributes, or re-export the model") from None
    except MemoryError:
        raise KilnError(f"{path}: onnx's checker ran out of memory on this model",
                        "look for a tensor of absurd size in the model, or re-export it") from None
    if complaint:
        raise KilnError(f"{path} fails the ONNX checker: {complaint}", "fix or re-export the model")
    if inference:
        log.warning("%s: ONNX's strict shape inference fails (%s); going on with lenient inference", path.name,
                    inference[:200])


def _findings(model: onnx.ModelProto) -> tuple[str | None, str | None]:
    """(the checker's first complaint, or None; strict shape inference's complaint where only it fails, inside an
    op's function body, or None)."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return None, None
    except Exception as err:  # ValidationError, InferenceError, and for damaged fields ValueError / UnicodeError
        first = _first_line(err)
        if not (isinstance(err, onnx.shape_inference.InferenceError) and _in_function_body(first, model)):
            return first, None
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - as above
        return _first_line(err), None
    return None, first


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _in_function_body(message: str, model: onnx.ModelProto) -> bool:
    """Whether the inference error MESSAGE is about an op whose ONNX function body it failed inside."""
    found = re.search(r"\(op_type:(\w+)\).*Inference error", message)
    if not found:
        return False
    opset = default_opset(model)
    try:
        schema = onnx.defs.get_schema(found.group(1), opset, "")
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)
