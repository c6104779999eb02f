"""NodeBuilder: appends ONNX nodes with fresh output names, for the rewrites that write ops out (recurrent.py,
control_flow.py, narrow_types.py)."""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
from onnx import helper, numpy_helper


class NodeBuilder:
    """Collects nodes in `nodes`; op() and const() return the name of the tensor they made. Names come from FRESH
    (a function of a base name) or, without one, are PREFIX_base_N."""

    def __init__(self, fresh: Callable[[str], str] | None = None, prefix: str = "kiln"):
        self.nodes: list = []
        counter = itertools.count()
        self.fresh = fresh or (lambda base: f"{prefix}_{base}_{next(counter)}")

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def const(self, value, name: str = "c") -> str:
        out = self.fresh(name)
        tensor = numpy_helper.from_array(np.asarray(value), out)
        self.nodes.append(helper.make_node("Constant", [], [out], value=tensor))
        return out
