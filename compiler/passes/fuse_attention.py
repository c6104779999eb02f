"""Each unmasked attention softmax(Q . K^T) . V as one fused kernel (compiler/kernels/attention.py) that keeps a
block's scores in cache. Unfused, the scores go through memory four times (written, read and written by
softmax, read by P . V): Whisper-tiny's encoder spent 79% of its int8 run there, bound by memory bandwidth.

- kiln.AttentionBF16 (int8 and bf16 builds on AMX, in the precision stage): the bf16 kernel on AMX tiles, with
  K^T and V packed into the tile layout by kernels of their own.
- kiln.FuseAttention (every CPU build, in the kernels stage, for attentions still there): the float32 kernel,
  with register tiles of FMAs, reading K^T (tokens padded to 32) and V as they are.

The pattern, on the graph after layout conversion:
    s = matmul(q, kt)                 q [..., M, D], kt [..., D, N'] (N' >= N: PadRows may pad the tokens)
    s = strided_slice(s, ...)         a leading run of the tokens (N' > N) or of the rows (q's rows padded)
    s = s * c or s / c                (c a float32 scalar constant: then q * c goes in)
    p = softmax(s, axis=-1)
    o = matmul(p, v)                  v [..., N, Dv], Dv a multiple of 16
with every operand float32, computed (not constant), the same leading dims, and s and p read by nothing else.
A mask or bias added to the scores (BERT's padding mask, GPT-2's causal one) leaves the attention as it is.
"""

from __future__ import annotations

import functools

import numpy as np

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import attention, dot_product
from .relax_util import const_value, mutator_pass, op_name, single_use_vars, static_dims

PASS_NAME = "kiln.AttentionBF16"
FP32_PASS_NAME = "kiln.FuseAttention"


def _operand(expr) -> list[int] | None:
    """The static shape of EXPR when it is a computed float32 tensor (not a constant), else None."""
    if const_value(expr) is not None:
        return None
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32":
        return None
    return static_dims(ty)


@mutator
class _AttentionFuser(PyExprMutator):
    def __init__(self, mod, lanes: int, bf16: bool):
        super().__init__(mod)
        self.lanes = lanes
        self.bf16 = bf16
        self.single = single_use_vars(mod)

    def _bound(self, var, name: str):
        """The call VAR is bound to when it is an op NAME read only here, else None."""
        if not isinstance(var, relax.Var) or var not in self.single:
            return None
        value = self.lookup_binding(var)
        return value if value is not None and op_name(value) == name else None

    def _scale(self, source) -> tuple:
        """(the scores before a scalar multiply or divide SOURCE applies, that scalar as a multiplier); SOURCE
        and None when it is no such op."""
        for name in ("relax.multiply", "relax.divide"):
            call = self._bound(source, name)
            scalar = const_value(call.args[1]) if call is not None else None
            if scalar is None or scalar.size != 1 or scalar.dtype != np.float32:
                continue
            value = float(scalar.reshape(()))
            if value != 0 and np.isfinite(value):  # a zero or non-finite scale is not folded into q
                return call.args[0], value if name == "relax.multiply" else 1.0 / value
        return source, None

    def _scores(self, softmax) -> tuple | None:
        """(q, kt, rows, tokens, scale or None) of the matmul whose (maybe scaled, maybe sliced) result SOFTMAX
        normalizes (static shapes only), else None."""
        source = softmax.args[0]
        probabilities = static_dims(source.ty)
        if not probabilities or len(probabilities) < 2:  # a symbolic dim (dynamic batch or tokens): left as it is
            return None
        ndim = len(probabilities)
        if int(softmax.attrs.axis) not in (-1, ndim - 1):
            return None
        source, scale = self._scale(source)
        while (sliced := self._bound(source, "relax.strided_slice")) is not None:
            # (axes, begin, end[, strides]) as tuples of ints: a leading run of the tokens or of the query rows
            fields = [[int(v.value) for v in arg.fields] for arg in sliced.args[1:] if isinstance(arg, relax.Tuple)]
            strides = fields[3] if len(fields) > 3 else [1]
            if len(fields) < 3 or fields[0] not in ([ndim - 1], [ndim - 2]) or fields[1] != [0] or strides != [1]:
                return None
            source = sliced.args[0]
        matmul = self._bound(source, "relax.matmul")
        if matmul is None:
            return None
        return matmul.args[0], matmul.args[1], probabilities[-2], probabilities[-1], scale

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.matmul":
            return call
        softmax = self._bound(call.args[0], "relax.nn.softmax")
        found = self._scores(softmax) if softmax is not None else None
        if found is None:
            return call
        q, kt, rows, tokens, scale = found
        q_shape, kt_shape, v_shape = (_operand(e) for e in (q, kt, call.args[1]))
        if None in (q_shape, kt_shape, v_shape) or len(q_shape) < 2 or not (
                q_shape[:-2] == kt_shape[:-2] == v_shape[:-2] and kt_shape[-2] == q_shape[-1] and q_shape[-2] >= rows
                and kt_shape[-1] >= tokens and v_shape[-2] == tokens and v_shape[-1] % dot_product.LANES == 0):
            return call
        if q_shape[-2] > rows:  # rows padded (kiln.PadRows) and sliced off the scores: the kernel takes any count
            q = self.builder_.emit(relax.op.strided_slice(q, [len(q_shape) - 2], [0], [rows]))
            q_shape = [*q_shape[:-2], rows, q_shape[-1]]
        if scale is not None:  # (q . k) * c = (q * c) . k: the multiply joins q's producer
            q = self.builder_.emit(relax.op.multiply(q, relax.const(np.float32(scale))))
        out = relax.TensorType([*q_shape[:-1], v_shape[-1]], "float32")
        if not self.bf16:
            width = -(-kt_shape[-1] // (2 * self.lanes)) * 2 * self.lanes  # whole register tiles of tokens
            if width != kt_shape[-1]:
                kt = self.builder_.emit(relax.op.nn.pad(kt, [0, 0] * (len(kt_shape) - 1) + [0, width - kt_shape[-1]]))
            kernel = attention.attention_kernel_fp32(q_shape, width, tokens, v_shape[-1], self.lanes)
            return relax.call_tir(self.builder_.add_func(kernel, "fused_attention"), [q, kt, call.args[1]], out)
        keys = self.builder_.emit(self.builder_.call_te(attention.pack_keys, kt, tokens,
                                                        primfunc_name_hint="pack_keys"))
        values = self.builder_.emit(self.builder_.call_te(attention.pack_values, call.args[1],
                                                          primfunc_name_hint="pack_values"))
        kernel = attention.attention_kernel(q_shape, tokens, v_shape[-1], self.lanes)
        return relax.call_tir(self.builder_.add_func(kernel, "bf16_attention"), [q, keys, values], out)


def lower_attention(lanes: int = 16) -> tvm.transform.Pass:
    """kiln.AttentionBF16 (module docstring); LANES: the target's fp32 vector width."""
    return mutator_pass(PASS_NAME, functools.partial(_AttentionFuser, lanes=lanes, bf16=True))


def fuse_attention(lanes: int = 16) -> tvm.transform.Pass:
    """kiln.FuseAttention (module docstring) for a target whose fp32 vectors have LANES lanes."""
    return mutator_pass(FP32_PASS_NAME, functools.partial(_AttentionFuser, lanes=lanes, bf16=False))
