"""Contractions padded to what the register tiles need, the output sliced back:

- kiln.PadChannels: output channels of constant-weight convolutions and matmuls padded to a multiple of the
  vector width (zero columns in the weights), and those of matmuls of two computed operands (attention's Q.K^T)
  with zero columns in the right operand. Narrow ones too, above half a vector: PP-OCRv4's detector computed its
  3x3 96 -> 24 convolutions at 160x160 as three 8-lane vectors (6.2 ms each, 170 GFLOP/s) and a 1x1 96 -> 18
  as nine 2-lane ones (3.1 ms); padded to 32 the float32 detector ran 0.92x the time, and both became int8
  sites (int8 sites need whole vectors): its int8 build 0.74x. Half a vector or less (a 3-channel image, a
  squeeze-excitation's 8) stays as it is: the padding would be most of the work.
- kiln.PadRows: the rows of a constant-weight matmul padded where no register tile divides them (197 ViT tokens:
  schedules/tiles.needs_row_padding), with zero rows in the activations.

In: the simplified graph in NHWC / HWIO. Out: the same graph with padded weights or activations and a
strided_slice after each padded call.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..schedules.tiles import ROW_PADDING, needs_row_padding
from .relax_util import const_value, linear_operands, mutator_pass, op_name


@mutator
class _ChannelPadder(PyExprMutator):
    """conv2d (NHWC, HWIO) / matmul whose output channels are not a multiple of the vector width: constant weights
    padded with zero columns (a computed right operand of a matmul with a pad), the output sliced back."""

    def __init__(self, mod, lanes: int):
        super().__init__(mod)
        self.lanes = lanes

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name == "relax.nn.conv2d" and ((call.attrs.data_layout, call.attrs.kernel_layout) != ("NHWC", "HWIO")
                                          or int(call.attrs.groups) != 1):
            return call
        shape = getattr(call.args[1].ty, "shape", None) if name in ("relax.nn.conv2d", "relax.matmul") else None
        if shape is None or len(shape) < 2 or not isinstance(shape[-1], tvm.tirx.IntImm):
            return call
        cols = int(shape[-1])
        if cols % self.lanes == 0 or cols <= self.lanes // 2:  # (see the module docstring)
            return call
        widths = [0, 0] * (len(shape) - 1) + [0, _round_up(cols, self.lanes) - cols]
        weight = const_value(call.args[1])
        if weight is not None:
            wide = relax.const(np.pad(weight, np.reshape(widths, (-1, 2))))
        elif name == "relax.matmul":
            # a computed right operand (attention's Q.K^T over 197 tokens): 12 heads of 197 x 64 @ 64 x 197 ran
            # 3.10 ms unpadded (one-lane vectors), 0.75 padded; ONNX Runtime 0.19-0.47
            wide = self.builder_.emit(relax.op.nn.pad(call.args[1], widths))
        else:
            return call
        return _sliced_back(self.builder_, call, [call.args[0], wide], call.ty.ndim - 1, cols)


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _sliced_back(builder, call, operands: list, axis: int, size: int):
    """CALL on OPERANDS (padded along its output's AXIS), the output sliced back to SIZE along that axis."""
    wide = builder.emit(relax.Call(call.op, operands, call.attrs))
    return relax.op.strided_slice(wide, axes=[axis], begin=[0], end=[size])


def pad_channels(lanes: int) -> tvm.transform.Pass:
    """Pad output channels of constant-weight convolutions and matmuls to a multiple of LANES (1000 -> 1008):
    the register tile then uses full vectors. Measured on SqueezeNet's 169x1000 classifier: half-width vectors
    ran 2x slower, and a guarded last vector 2.5-10x slower, than full ones."""
    return mutator_pass("kiln.PadChannels", functools.partial(_ChannelPadder, lanes=lanes))


@mutator
class _RowPadder(PyExprMutator):
    """matmul with constant 2-D weights whose activation rows (the second-last axis, static) have no register
    tile: zero rows appended to the activations, the output sliced back. Not where both operands are computed:
    attention's P.V over 197 tokens (12 heads, 197 x 197 @ 197 x 64) ran 0.44 ms guarded, 0.55 ms padded (the
    copy of P costs more than the guard)."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        operands = linear_operands(call)
        shape = operands[1] if operands else _narrow_left_operand(call)
        if len(shape) < 2 or not isinstance(shape[-2], tvm.tirx.IntImm) or not needs_row_padding(int(shape[-2])):
            return call
        rows = int(shape[-2])
        widths = [0, 0] * (len(shape) - 2) + [0, _round_up(rows, ROW_PADDING) - rows, 0, 0]
        padded = self.builder_.emit(relax.op.nn.pad(call.args[0], widths))
        return _sliced_back(self.builder_, call, [padded, call.args[1]], len(shape) - 2, rows)


def pad_rows() -> tvm.transform.Pass:
    """Pad the activation rows of constant-weight matmuls that no register tile divides (197 -> 200)."""
    return mutator_pass("kiln.PadRows", _RowPadder)


def _narrow_left_operand(call) -> list:
    """The static shape of a matmul's computed left operand where it holds no more columns than the right
    operand (attention's Q.K^T: 197 x 64 @ 64 x 197), so padding its rows copies less than the product writes;
    else []."""
    if op_name(call) != "relax.matmul":
        return []
    left, right = (getattr(a.ty, "shape", None) for a in call.args)
    if left is None or right is None or len(left) < 2 or len(right) < 2 or len(left) != len(right):
        return []
    depth, cols = left[-1], right[-1]
    static = all(isinstance(d, tvm.tirx.IntImm) for d in (depth, cols))
    return list(left) if static and int(depth) <= int(cols) else []

