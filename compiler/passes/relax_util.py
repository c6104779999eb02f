"""Small helpers shared by Kiln's Relax graph passes."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind kOutEWiseFusable: epilogues (bias, GELU) fuse into the kernel
NUM_INPUT = "num_input"  # Relax's attribute: how many leading parameters of main are the model's inputs
SCHEDULED = "tirx.is_scheduled"  # TVM's attribute of a TIR kernel that has its schedule


def model_inputs(main: relax.Function) -> list:
    """MAIN's parameters that are the model's inputs (the rest, after NUM_INPUT of them, are lifted weights)."""
    count = main.attrs.get(NUM_INPUT) if main.attrs is not None else None
    return list(main.params) if count is None else list(main.params)[:int(count)]


def const_value(expr) -> np.ndarray | None:
    """The array of a Relax constant, or None when EXPR is not one."""
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy") else None


def static_dims(ty) -> list[int] | None:
    """The dims of the tensor type TY when all are numbers; None for a symbolic or unknown shape."""
    shape = getattr(ty, "shape", None)
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return [int(d) for d in shape.values]


def spatial_axes(layout: str) -> list[int]:
    """The positions of the spatial axes (D, H, W) in a layout string such as NCHW or NHWC."""
    return [i for i, letter in enumerate(layout) if letter in "DHW"]


def op_name(expr) -> str:
    """The operator name of a Relax call ('relax.matmul'), or '' for anything else."""
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def linear_operands(call) -> tuple[np.ndarray, list] | None:
    """(constant 2-D weights, the activation's shape) of CALL where it is a matmul of an activation with constant
    2-D weights and the activation's shape is known (its dims IntImm where static); else None."""
    if op_name(call) != "relax.matmul":
        return None
    weight = const_value(call.args[1])
    shape = getattr(call.args[0].ty, "shape", None)
    if weight is None or weight.ndim != 2 or shape is None:
        return None
    return weight, list(shape)


def rewrite_relax_functions(mod: tvm.IRModule, make_mutator) -> tvm.IRModule:
    """Run the PyExprMutator that MAKE_MUTATOR(mod) builds over every Relax function of MOD; return the result."""
    mutator = make_mutator(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def kernels_by_name(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    """MOD's TIR kernels by name (the name a call_tir's GlobalVar carries)."""
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def only_block(func: tvm.tirx.PrimFunc):
    """The block under FUNC's root block and its loop nest, when FUNC holds just one; else None."""
    root = func.body.block if hasattr(func.body, "block") else None
    inner = root.body if root is not None else None
    while isinstance(inner, tvm.tirx.For):
        inner = inner.body
    return getattr(inner, "block", None)


def mutator_pass(name: str, make_mutator) -> tvm.transform.Pass:
    """A module pass called NAME that runs the PyExprMutator MAKE_MUTATOR(mod) builds over every Relax function."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_relax_functions(mod, make_mutator)

    return _pass


def readers(mod: tvm.IRModule) -> dict:
    """Each variable bound in a dataflow block of MOD's Relax functions -> the values of the bindings of that
    block that read it (relax.analysis.udchain)."""
    found = {}
    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    values = {b.var: b.value for b in block.bindings}
                    for var, users in relax.analysis.udchain(block).items():
                        found[var] = [values.get(user) for user in users]
    return found


def single_use_vars(mod: tvm.IRModule) -> set:
    """The dataflow variables of MOD's Relax functions that exactly one binding of their block reads."""
    return {var for var, values in readers(mod).items() if len(values) == 1}


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """True when the TIR kernel FUNC carries its schedule already (no rule, record or fusion may touch it)."""
    return func.attrs is not None and int(func.attrs.get(SCHEDULED, 0)) == 1


def fusable(func: tirx.PrimFunc) -> bool:
    """True when FUNC can be fused with another kernel and scheduled after: its body is a root block (TVM's
    FuseTIR fuses only such kernels) and it is not scheduled already (Kiln's loop kernels, e.g.
    compiler/kernels/softmax.py)."""
    return isinstance(func.body, tvm.s_tir.stmt.SBlockRealize) and not is_scheduled(func)


def fuse_pair(first: tirx.PrimFunc, second: tirx.PrimFunc, in_place: bool = False) -> tirx.PrimFunc:
    """One kernel computing SECOND(FIRST(a...), b...), with parameters a..., b..., output (TVM's FuseTIR on a
    primitive function of the two calls). IN_PLACE: SECOND has no output parameter of its own but writes into
    its last one (call_tir_inplace), and so does the fused kernel."""
    def ty(param):
        return relax.TensorType([int(d) for d in param.shape], str(param.dtype))

    builder = relax.BlockBuilder()
    first_gv, second_gv = builder.add_func(first, "first"), builder.add_func(second, "second")
    inputs = len(first.params) - 1
    rest = second.params[1:] if in_place else second.params[1:-1]

    def params():
        return [relax.Var(f"a{i}", ty(p)) for i, p in enumerate(first.params[:-1])] + \
               [relax.Var(f"b{i}", ty(p)) for i, p in enumerate(rest)]

    pair_params = params()
    with builder.function("pair", pair_params, {"Primitive": True}, private=True):
        with builder.dataflow():
            middle = builder.emit(relax.call_tir(first_gv, pair_params[:inputs], ty(first.params[-1])))
            args, out_ty = [middle] + pair_params[inputs:], ty(second.params[-1])
            call = relax.call_tir_inplace(second_gv, args, [len(args) - 1], out_ty) if in_place \
                else relax.call_tir(second_gv, args, out_ty)
            out = builder.emit_output(call)
        builder.emit_func_output(out)
    pair_gv = builder.get().get_global_var("pair")
    main_params = params()
    with builder.function("main", main_params):
        with builder.dataflow():
            out = builder.emit_output(relax.Call(pair_gv, main_params))
        builder.emit_func_output(out)
    fused = relax.transform.FuseTIR()(builder.get())
    return next(f for _gv, f in fused.functions_items() if isinstance(f, tirx.PrimFunc))


def returned_fields(main: relax.Function) -> list:
    """What MAIN returns, field by field: the fields of its result tuple (followed through the bindings that name
    it), or the one result."""
    bound = {b.var: b.value for block in main.body.blocks for b in block.bindings}
    result = main.body.body
    while isinstance(result, relax.Var) and isinstance(bound.get(result), (relax.Var, relax.Tuple)):
        result = bound[result]
    return list(result.fields) if isinstance(result, relax.Tuple) else [result]

