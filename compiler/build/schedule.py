"""The schedule stage: every fused TIR kernel gets a schedule, from a tuned record first, then Kiln's default
CPU rules (compiler/schedules/) or dlight's GPU rules.

In: the fused module (compiler/pipeline.fuse_kernels) and the tuning database. Out: the scheduled module and a
KernelReport of how each kernel got its schedule (the manifest's `kernels`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import tvm
from tvm import relax, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.analysis import estimate_tir_flops

from runtime.errors import KilnError

from ..passes.relax_util import SCHEDULED, is_scheduled
from ..schedules import default_rules, fixed_schedule
from ..tuning.database import apply_database

log = logging.getLogger(__name__)


HEAVY_MFLOP = 1.0  # naive kernels below this are left out of the warning (reshapes, small copies)


@dataclass
class KernelReport:
    """How each TIR kernel got its schedule: a tuned record, a default rule, or none (naive loops).
    unscheduled_mflop holds the estimated work of each naive kernel (None where shapes are symbolic)."""

    tuned: list[str] = field(default_factory=list)
    default_rule: list[str] = field(default_factory=list)
    unscheduled: list[str] = field(default_factory=list)
    unscheduled_mflop: dict[str, float | None] = field(default_factory=dict)

    def heavy(self) -> list[tuple[str, float | None]]:
        """Naive kernels worth a warning, heaviest first: at least HEAVY_MFLOP, or of unknown size."""
        found = [(k, f) for k, f in self.unscheduled_mflop.items() if f is None or f >= HEAVY_MFLOP]
        return sorted(found, key=lambda item: -(item[1] or float("inf")))

    def to_json(self) -> dict:
        return {"tuned": len(self.tuned), "default_rule": len(self.default_rule),
                "unscheduled": len(self.unscheduled), "unscheduled_kernels": self.unscheduled,
                "heavy_unscheduled": [{"kernel": k, "mflop": f} for k, f in self.heavy()]}


def kernel_mflop(func: tirx.PrimFunc) -> float | None:
    """Estimated work of one TIR kernel in MFLOP; None where it has no estimate (symbolic shapes)."""
    try:
        return round(estimate_tir_flops(tvm.IRModule({"main": func})) / 1e6, 3)
    except Exception:  # noqa: BLE001 - symbolic shapes and opaque calls have no estimate; report it as unknown
        return None


def _scheduled(mod: tvm.IRModule) -> set[str]:
    return {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and is_scheduled(f)}


def _kernels(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))


def gpu_rules() -> list:
    """TVM's dlight GPU rules, tried in order; Fallback binds any kernel the others leave (one thread per output
    element), so every kernel gets a GPU schedule."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def _schedule_fixed(mod: tvm.IRModule, lanes: int) -> tvm.IRModule:
    """MOD with the kernels whose Kiln schedule samples nothing scheduled already (see fixed_schedule), so no
    tuning record replaces them."""
    mod = mod.clone()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not (func.attrs is not None and SCHEDULED in func.attrs):
            found = fixed_schedule(tvm.IRModule({"main": func}), lanes)
            if found is not None:
                mod[gv] = found.mod["main"].with_attr(SCHEDULED, True)
    return mod


def schedule(mod: tvm.IRModule, database, target: tvm.target.Target, lanes: int,
             device: str = "cpu") -> tuple[tvm.IRModule, KernelReport]:
    """Give every kernel a schedule: tuned records first, then Kiln's default CPU rules (LANES: fp32 vector width)
    or dlight's GPU rules for a CUDA DEVICE; report which kernel got what."""
    rules = gpu_rules() if device == "cuda" else default_rules(lanes)
    fixed_mod = mod if device == "cuda" else _schedule_fixed(mod, lanes)
    with target:
        tuned_mod = apply_database(fixed_mod, database)
        tuned = _scheduled(tuned_mod) - _scheduled(fixed_mod)
        done = dl.ApplyDefaultSchedule(*rules)(tuned_mod)
    by_rule = _scheduled(done) - tuned
    kernels = _kernels(done)
    unscheduled = [k for k in kernels if k not in tuned and k not in by_rule]
    report = KernelReport(tuned=sorted(tuned), default_rule=sorted(by_rule), unscheduled=unscheduled,
                          unscheduled_mflop={k: kernel_mflop(mod[k]) for k in unscheduled})
    if device != "cpu" and unscheduled:  # a GPU kernel without thread bindings does not build
        raise KilnError(f"{len(unscheduled)} kernel(s) got no {device} schedule: {', '.join(unscheduled)}",
                        "tune them for this target with `kiln tune --rpc`, or report the model")
    return done, report


def _arg_spec(ty) -> dict | None:
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = [int(d) if isinstance(d, tirx.IntImm) else str(d) for d in ty.shape.values]
    return {"shape": dims, "dtype": str(ty.dtype)}


def kernel_calls(mod: tvm.IRModule) -> list[dict]:
    """Each TIR kernel `main` calls, in order, with the shapes and dtypes of its arguments (inputs, then
    outputs, which an in-place call has none of; symbolic dims by name): what `kiln run --profile` needs to time
    the kernels of an artifact."""
    calls = []

    def visit(expr):
        name = expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""
        if name in ("relax.call_tir", "relax.call_tir_inplace"):
            args = list(expr.args[1].fields) if isinstance(expr.args[1], relax.Tuple) else []
            # an in-place kernel writes into some of its arguments and has no output parameters of its own
            outs = [] if name == "relax.call_tir_inplace" else \
                expr.ty.fields if isinstance(expr.ty, relax.TupleType) else [expr.ty]
            specs = [_arg_spec(a.ty) for a in args] + [_arg_spec(o) for o in outs]
            if all(specs):
                calls.append({"kernel": expr.args[0].name_hint, "args": specs})

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return calls
