"""kiln.FuseRowStrips: a convolution kernel and the depthwise convolution kernel that alone reads its output, fused
into one kernel that computes them strip by strip (compiler/schedules/row_strips.py), where the activation between
them is larger than a core's L2 share: an inverted-residual block's expansion then never goes out to memory.
Measured on MobileNetV2: see RowStrips."""

from __future__ import annotations

import tvm
from tvm import tirx

from ..schedules.contraction import STREAMING_BYTES, buffer_bytes
from ..schedules.row_strips import RowStrips
from .fuse_pairs import PairFuser
from .relax_util import mutator_pass


def _large_middle(first: tirx.PrimFunc, _second: tirx.PrimFunc) -> bool:
    """Whether FIRST's output is larger than a core's L2 share."""
    return (buffer_bytes(first.params[-1]) or 0) > STREAMING_BYTES


def fuse_row_strips(lanes: int) -> tvm.transform.Pass:
    """kiln.FuseRowStrips for a target of LANES fp32 lanes (see the module docstring)."""
    return mutator_pass("kiln.FuseRowStrips", lambda mod: PairFuser(mod, RowStrips(lanes), _large_middle))
