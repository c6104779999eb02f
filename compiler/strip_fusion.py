"""kiln.FuseRowStrips: a convolution kernel and the depthwise convolution kernel that alone reads its output, fused
into one kernel that computes them strip by strip (compiler/schedules/row_strips.py), where the activation between
them is larger than a core's L2 share: an inverted-residual block's expansion then never goes out to memory.
Measured on MobileNetV2: see RowStrips."""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_util import kernels_by_name, mutator_pass, op_name, single_use_vars
from .schedules.contraction import STREAMING_BYTES, buffer_bytes
from .schedules.row_strips import RowStrips

_LLVM = {"kind": "llvm"}


def fuse_kernels(first: tirx.PrimFunc, second: tirx.PrimFunc, in_place: bool = False) -> tirx.PrimFunc:
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


@mutator
class _StripFuser(PyExprMutator):
    """Rewrites y = call_tir(first, a); z = call_tir(second, (y, b...)) into z = call_tir(first+second, (a, b...))
    where RowStrips schedules the fused kernel; y is then dead (DeadCodeElimination drops it)."""

    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.kernels = kernels_by_name(mod)
        self.rule = RowStrips(lanes)
        self.fused: dict[tuple[str, str], tvm.ir.GlobalVar | None] = {}
        self.single_use = single_use_vars(mod)

    def visit_call_(self, call):
        middle = call.args[1].fields[0] if op_name(call) == "relax.call_tir" and len(call.args) == 2 \
            and isinstance(call.args[1], relax.Tuple) and call.args[1].fields else None
        # the rule only needs the pair's first input to be used once (by this call), as its first argument
        candidate = isinstance(middle, relax.DataflowVar) and middle in self.single_use \
            and sum(1 for arg in call.args[1].fields if arg.same_as(middle)) == 1
        call = self.visit_expr_post_order(call)
        if not candidate:
            return call
        producer = self.lookup_binding(call.args[1].fields[0])
        if op_name(producer) != "relax.call_tir" or len(producer.args) != 2:
            return call
        kernel = self._fused(producer.args[0], call.args[0])
        if kernel is None:
            return call
        args = list(producer.args[1].fields) + list(call.args[1].fields[1:])
        return relax.call_tir(kernel, args, call.ty)

    def _fused(self, first: tvm.ir.GlobalVar, second: tvm.ir.GlobalVar) -> tvm.ir.GlobalVar | None:
        key = (first.name_hint, second.name_hint)
        if key not in self.fused:
            self.fused[key] = None
            # a kernel fused here already (the first of a pair is not in the module's kernels) is left as it is
            funcs = self.kernels.get(first.name_hint), self.kernels.get(second.name_hint)
            if all(funcs) and (buffer_bytes(funcs[0].params[-1]) or 0) > STREAMING_BYTES:
                kernel = fuse_kernels(*funcs)
                if self.rule.apply(kernel, tvm.target.Target(_LLVM), False) is not None:
                    name = first.name_hint + "_" + second.name_hint.removeprefix("fused_")
                    self.fused[key] = self.builder_.add_func(kernel, name)
        return self.fused[key]


def fuse_row_strips(lanes: int) -> tvm.transform.Pass:
    """kiln.FuseRowStrips for a target of LANES fp32 lanes (see the module docstring)."""
    return mutator_pass("kiln.FuseRowStrips", lambda mod: _StripFuser(mod, lanes))
