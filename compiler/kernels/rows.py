"""What Kiln's row kernels (softmax.py, layer_norm.py) share: how a row splits into vectors, and how a kernel
written as TVMScript loops is built and marked.

A row of WIDTH elements is VECTORS whole vectors of LANES lanes; when LANES does not divide it, the last LANES
elements are one more vector starting at LAST that overlaps the previous one, whose lanes below COUNTED belong to
the whole vectors already (a reduction masks them out; a write may write them twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import tirx

from ..tvmscript import quick_parse


@dataclass(frozen=True)
class RowSplit:
    """ROWS rows of WIDTH elements in vectors of LANES lanes (see the module docstring)."""

    rows: int
    width: int
    lanes: int

    @property
    def vectors(self) -> int:
        return self.width // self.lanes

    @property
    def has_tail(self) -> bool:
        return self.width % self.lanes != 0

    @property
    def last(self) -> int:
        return self.width - self.lanes

    @property
    def counted(self) -> int:
        return self.lanes - (self.width - self.vectors * self.lanes)


def loop_kernel(build, shape: list[int], lanes: int, *args) -> tirx.PrimFunc:
    """BUILD(int64 SHAPE, RowSplit, *ARGS) -> PrimFunc, built with the quick TVMScript parser and marked scheduled
    and opaque, so no schedule rule or fusion touches it. A row narrower than LANES is one vector of its width."""
    split = RowSplit(math.prod(shape[:-1]), shape[-1], min(lanes, shape[-1]))
    dims = [tirx.IntImm("int64", d) for d in shape]  # as TVM's legalized kernels declare their buffers
    with quick_parse():
        func = build(dims, split, *args)
    return func.with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})  # 8: kOpaque, never fused
