"""kiln.FoldBatchNorm: an inference batch-norm after a conv2d / matmul with constant weights folded into them.

In: the imported graph (NCHW convolutions). Out: the same graph with conv2d(x, W * s) + b' where
batch_norm(conv2d(x, W) [+ b]) was.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import const_value, op_name, rewrite_relax_functions


@mutator
class _BatchNormFolder(PyExprMutator):
    """Rewrites batch_norm(conv2d(x, W) [+ b]) into conv2d(x, W * s) + b' (likewise for matmul with a constant
    right-hand side), with s = gamma / sqrt(var + eps) and b' = (b - mean) * s + beta computed at compile time."""

    def _producer(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _linear_with_bias(self, data):
        """(linear call, bias array or None) when DATA is conv2d/matmul with constant weights, plus a constant."""
        producer = self._producer(data)
        bias = None
        if op_name(producer) == "relax.add":
            lhs, rhs = producer.args
            bias, producer = const_value(rhs), self._producer(lhs)
            if bias is None:
                return None, None
        name = op_name(producer)
        if name == "relax.nn.conv2d":
            attrs = producer.attrs
            if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
                return None, None
        elif name != "relax.matmul":
            return None, None
        if const_value(producer.args[1]) is None:
            return None, None
        return producer, bias

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.nn.batch_norm":
            return call
        data, *stats = call.args
        gamma, beta, mean, var = (const_value(s) for s in stats)
        linear, bias = self._linear_with_bias(data)
        rank = data.ty.ndim
        if linear is None or any(a is None for a in (gamma, beta, mean, var)):
            return call
        is_conv = op_name(linear) == "relax.nn.conv2d"
        if (is_conv and int(call.attrs.axis) not in (1, 1 - rank)) or (
            not is_conv and int(call.attrs.axis) not in (-1, rank - 1)
        ):
            return call
        dtype = str(data.ty.dtype)
        scale = (gamma if call.attrs.scale else np.ones_like(gamma)) / np.sqrt(var + float(call.attrs.epsilon))
        shift = (beta if call.attrs.center else np.zeros_like(beta)) - mean * scale
        weight = const_value(linear.args[1])
        if is_conv:
            weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
            bias_shape = (1, -1) + (1,) * (rank - 2)
        else:
            weight = weight * scale
            bias_shape = (-1,)
        if bias is not None:
            shift = shift + (bias.reshape(-1) if bias.size == scale.size else bias) * scale
        new_linear = self.builder_.emit(
            relax.Call(linear.op, [linear.args[0], relax.const(weight.astype(dtype))], linear.attrs)
        )
        folded = self.builder_.emit(relax.op.add(new_linear, relax.const(shift.astype(dtype).reshape(bias_shape))))
        return relax.Tuple([folded, stats[2], stats[3]])


@tvm.transform.module_pass(opt_level=0, name="kiln.FoldBatchNorm")
def fold_batch_norm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Fold inference batch-norms into the conv2d / matmul (with constant weights) that feeds them."""
    return rewrite_relax_functions(mod, _BatchNormFolder)
