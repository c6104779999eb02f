"""Which outputs of main are tensors the call made for itself.

The runtime hands such an output to the caller as a numpy array over the VM's own memory instead of copying it
(a 1.8 MB output: a 0.13 ms copy into a freshly mapped array, more than the kernel that wrote it). An output
that is an input, a weight or a constant of the model, or a view of one, or a second view of a tensor another
output already returns, must still be copied: the caller could write into the model.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .relax_util import op_name, returned_fields

_MADE_BY_CALL = {"relax.call_tir", "relax.call_dps_packed", "relax.call_tir_with_grad"}
_VIEWS = {"relax.reshape", "relax.memory.view"}  # their result shares their first argument's memory


def _sources(main: relax.Function) -> dict[relax.Var, object]:
    """What each variable of MAIN's body may share memory with: ("fresh", ...) for a tensor a kernel made, the
    parameter it views, or None when it cannot be told (a constant, a packed call)."""
    source: dict[relax.Var, object] = {p: p for p in main.params}
    for block in main.body.blocks:
        for binding in block.bindings:
            value, var = binding.value, binding.var
            if op_name(value) in _MADE_BY_CALL:
                source[var] = ("fresh", var)
            elif isinstance(value, relax.Var):
                source[var] = source.get(value)
            elif isinstance(value, relax.TupleGetItem) and isinstance(source.get(value.tuple_value), tuple):
                source[var] = ("fresh", var, value.index)  # one field of a kernel's tuple of outputs
            elif op_name(value) in _VIEWS and isinstance(value.args[0], relax.Var):
                source[var] = source.get(value.args[0])  # a view of its first argument
            else:
                source[var] = None
    return source


def fresh_outputs(main: relax.Function) -> list[bool]:
    """For each output of MAIN (one, or the fields of the tuple it returns), whether it is a tensor this call
    made and no earlier output shares."""
    fields = returned_fields(main)
    source = _sources(main)
    seen, fresh = set(), []
    for field in fields:
        origin = source.get(field) if isinstance(field, relax.Var) else None
        ok = isinstance(origin, tuple) and origin[0] == "fresh" and origin not in seen
        fresh.append(ok)
        if origin is not None:
            seen.add(origin)
    return fresh


def mark_fresh_outputs(report: dict) -> tvm.transform.Pass:
    """Pass (analysis only): puts fresh_outputs(main) in REPORT['fresh_outputs']."""

    @tvm.transform.module_pass(opt_level=0, name="kiln.MarkFreshOutputs")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        report["fresh_outputs"] = fresh_outputs(mod["main"])
        return mod

    return _pass
