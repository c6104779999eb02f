"""Shape values computed at run time, resolved into the symbolic dims they are: after TVM's importer.

A dim computed from other dims at run time (a `Range(0, Shape(x)[1])` of position ids, a Reshape's shape that
is arithmetic on dims) comes out of TVM's importer as a fresh symbolic var bound by a `match_cast` of
`tensor_to_shape(t)`, where t is a small int64 tensor computed from the model's dims. TVM's VM cannot lower
shapes built on such vars ("PrimExpr ... has not been computed") and its passes cannot prove them equal to the
dims they are (the sequence length). This pass evaluates those small tensors symbolically (shape_to_tensor,
shape_of, reshape, astype, take, strided_slice, concat, elementwise integer arithmetic) and puts the expression
each fresh var stands for in its place (`Function.bind_symbolic_vars`): the match_cast becomes a run-time check
and every shape downstream is in the model's own dims.

In: the imported IRModule. Out: the same module with each resolvable var replaced; the rest as it was.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax, tirx

DIM_BOUND = 1 << 62
MAX_ELEMENTS = 16  # tensors this small are shape arithmetic; larger ones are data
log = logging.getLogger(__name__)

INT_TYPES = ("int64", "int32")
ARITHMETIC = {
    "relax.add": lambda a, b: a + b,
    "relax.subtract": lambda a, b: a - b,
    "relax.multiply": lambda a, b: a * b,
    "relax.floor_divide": tirx.floordiv,
    "relax.floor_mod": tirx.floormod,
    "relax.maximum": tirx.max,
    "relax.minimum": tirx.min,
    "relax.less": lambda a, b: a < b,  # comparisons and where: the negative-index normalization of Gather
    "relax.less_equal": lambda a, b: a <= b,
    "relax.greater": lambda a, b: a > b,
    "relax.greater_equal": lambda a, b: a >= b,
    "relax.equal": lambda a, b: a == b,
}


class _Values:
    """Symbolic values of a function's small int tensors: {var: (dims, flat elements)}."""

    def __init__(self, analyzer: tvm.sym.Analyzer):
        self.analyzer = analyzer
        self.known: dict[relax.Var, tuple[list[int], list]] = {}

    def _shape_values(self, expr) -> list | None:
        ty = expr.ty
        if isinstance(expr, relax.ShapeExpr):
            return [self.analyzer.simplify(v) for v in expr.values]
        if isinstance(ty, relax.ShapeType) and ty.values is not None:
            return [self.analyzer.simplify(v) for v in ty.values]
        return None

    def of(self, expr) -> tuple[list[int], list] | None:
        """(dims, elements) of EXPR, a small int tensor, or None when they are not known."""
        if isinstance(expr, relax.Var):
            return self.known.get(expr)
        if isinstance(expr, tvm.ir.GenericConst):
            array = expr.value.numpy()
            if array.dtype.kind in "iu" and array.size <= MAX_ELEMENTS:
                return list(array.shape), [tirx.IntImm("int64", int(v)) for v in array.reshape(-1)]
            return None
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            try:
                return self._call(expr)
            except (ValueError, IndexError, TypeError, AttributeError, RuntimeError) as err:  # an unusual call: unknown
                log.debug("shape value of %s not known: %s", expr.op.name, err)
                return None
        return None

    def _call(self, call: relax.Call) -> tuple[list[int], list] | None:
        name, args = call.op.name, list(call.args)
        if name == "relax.shape_to_tensor":
            values = self._shape_values(args[0])
            return None if values is None else ([len(values)], values)
        if name == "relax.shape_of":
            shape = args[0].ty.shape if isinstance(args[0].ty, relax.TensorType) else None
            values = None if shape is None else self._shape_values(shape)
            return None if values is None else ([len(values)], values)
        if name == "relax.astype":
            return self.of(args[0]) if str(call.attrs.dtype) in INT_TYPES else None
        if name in ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"):
            value = self.of(args[0])
            dims = _static_dims(call)
            return None if value is None or dims is None or int(np.prod(dims)) != len(value[1]) else (dims, value[1])
        if name == "relax.negative":
            value = self.of(args[0])
            return None if value is None else (value[0], [-v for v in value[1]])
        if name in ARITHMETIC:
            return self._elementwise(call, ARITHMETIC[name], args)
        if name == "relax.take":
            return self._take(call, args)
        if name == "relax.where":
            return self._where(call, args)
        if name == "relax.strided_slice":
            return self._slice(call, args)
        if name == "relax.concat":
            parts = [self.of(t) for t in args[0].fields] if isinstance(args[0], relax.Tuple) else None
            if not parts or any(p is None or len(p[0]) != 1 for p in parts):
                return None
            values = [v for p in parts for v in p[1]]
            return [len(values)], values
        return None

    def _elementwise(self, call, fn, args):
        a, b = self.of(args[0]), self.of(args[1])
        dims = _static_dims(call)
        if a is None or b is None or dims is None:
            return None
        size = int(np.prod(dims))
        if {len(a[1]), len(b[1])} - {1, size}:
            return None  # only scalars against vectors: the broadcasts shape arithmetic uses
        pick = (lambda v, i: v[1][0] if len(v[1]) == 1 else v[1][i])
        return dims, [self.analyzer.simplify(fn(pick(a, i), pick(b, i))) for i in range(size)]

    def _where(self, call, args):
        condition, a, b = (self.of(x) for x in args)
        dims = _static_dims(call)
        if condition is None or a is None or b is None or dims is None:
            return None
        size = int(np.prod(dims))
        if {len(condition[1]), len(a[1]), len(b[1])} - {1, size}:
            return None
        picked = []
        for i in range(size):
            flag = condition[1][0 if len(condition[1]) == 1 else i]
            if not isinstance(flag, tirx.IntImm):
                return None  # a condition on a symbolic dim: not a constant pick
            source = a if flag.value else b
            picked.append(source[1][0 if len(source[1]) == 1 else i])
        return dims, picked

    def _take(self, call, args):
        data, index = self.of(args[0]), self.of(args[1])
        if data is None or index is None or len(data[0]) != 1 or int(call.attrs.axis or 0) != 0:
            return None
        size = len(data[1])
        picked = []
        for i in index[1]:
            if not isinstance(i, tirx.IntImm):
                return None
            position = int(i.value)
            if not -size <= position < size:
                return None
            picked.append(data[1][position])
        return index[0], picked

    def _slice(self, call, args):
        data = self.of(args[0])
        if data is None or len(data[0]) != 1:
            return None
        axes, begin, end = [_ints(args[i]) for i in (1, 2, 3)]
        strides = _ints(args[4]) if len(args) > 4 else [1]
        if axes != [0] or begin is None or end is None or strides is None:
            return None
        values = data[1][slice(begin[0], end[0], strides[0])]
        return [len(values)], values


def _ints(expr) -> list[int] | None:
    if isinstance(expr, relax.Tuple):
        fields = list(expr.fields)  # prim values: IntImm in this TVM
        return [int(f.value) for f in fields] if all(isinstance(f, tirx.IntImm) for f in fields) else None
    if isinstance(expr, relax.ShapeExpr):
        return [int(v.value) for v in expr.values] if all(isinstance(v, tirx.IntImm) for v in expr.values) else None
    return None


def _static_dims(call: relax.Call) -> list[int] | None:
    ty = call.ty
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) not in (*INT_TYPES, "bool") or ty.shape is None:
        return None
    dims = _ints(ty.shape)
    return dims if dims is not None and int(np.prod(dims)) <= MAX_ELEMENTS else None


def _bindings(func: relax.Function):
    """(block index, binding index, binding) of FUNC's top-level bindings."""
    body = func.body
    for b, block in enumerate(body.blocks if isinstance(body, relax.SeqExpr) else []):
        for i, binding in enumerate(block.bindings):
            yield b, i, binding


def _param_dims(func: relax.Function) -> list[tirx.Var]:
    found = []
    for param in func.params:
        ty = param.ty
        if isinstance(ty, relax.TensorType) and ty.shape is not None and isinstance(ty.shape, relax.ShapeExpr):
            found.extend(v for v in ty.shape.values if isinstance(v, tirx.Var))
    return found


def resolved_vars(func: relax.Function) -> tuple[dict[tirx.Var, tvm.ir.PrimExpr], set[tuple[int, int]]]:
    """{fresh var: what it equals in FUNC's own dims} for each match_cast var a small int tensor defines, and the
    places (block, binding) of those match_casts."""
    analyzer = tvm.sym.Analyzer()
    for dim in _param_dims(func):
        # dims are non-negative: this lets the simplifier drop the max(dim, 0) of a Range's length
        analyzer.update(dim, tvm.sym.analyzer.ConstIntBound(0, DIM_BOUND), override=True)
    values = _Values(analyzer)
    resolved: dict[tirx.Var, tvm.ir.PrimExpr] = {}
    places: set[tuple[int, int]] = set()
    defined: dict[relax.Var, relax.Expr] = {}
    for block, index, binding in _bindings(func):
        if isinstance(binding, relax.VarBinding):
            defined[binding.var] = binding.value
            value = values.of(binding.value)
            if value is not None:
                values.known[binding.var] = value
            continue
        target = binding.ty
        source = binding.value
        if isinstance(target, relax.TensorType):
            value = values.of(source)
            if value is not None:
                values.known[binding.var] = value
            continue
        if not isinstance(target, relax.ShapeType) or target.values is None:
            continue
        tensor = defined.get(source) if isinstance(source, relax.Var) else source
        if not (isinstance(tensor, relax.Call) and isinstance(tensor.op, tvm.ir.Op)
                and tensor.op.name == "relax.tensor_to_shape"):
            continue
        value = values.of(tensor.args[0])
        if value is None or len(value[1]) != len(target.values):
            continue
        fresh = [(var, expr) for var, expr in zip(target.values, value[1])
                 if isinstance(var, tirx.Var) and var not in resolved]
        if len(fresh) == len(target.values):
            places.add((block, index))
            for var, expr in fresh:
                resolved[var] = expr
                analyzer.bind(var, expr)
    return resolved, places


def _without_checks(func: relax.Function, places: set[tuple[int, int]]) -> relax.Function:
    """FUNC with the match_casts at PLACES bound to the shape they were shown to be: the chain of small tensors
    that computed them is then dead, and TVM's DecomposeOpsForInference cannot bring fresh vars back from it."""
    blocks = []
    for b, block in enumerate(func.body.blocks):
        bindings = [relax.VarBinding(binding.var, relax.ShapeExpr(list(binding.ty.values)))
                    if (b, i) in places else binding for i, binding in enumerate(block.bindings)]
        blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(bindings))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                          func.attrs)


def resolve_shape_values(mod: tvm.IRModule) -> tvm.IRModule:
    """MOD with each run-time-computed dim of `main` that is resolvable replaced by its expression."""
    func = mod["main"]
    resolved, places = resolved_vars(func)
    if not resolved:
        return mod
    mod["main"] = _without_checks(func.bind_symbolic_vars(resolved), places)
    return relax.transform.DeadCodeElimination(["main"])(relax.transform.Normalize()(mod))
