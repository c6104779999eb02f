"""Model inputs read where the caller keeps them.

TVM declares every kernel buffer 64-byte aligned and tells LLVM so, which may then emit aligned vector loads: an
input has to be copied into a 64-byte aligned tensor before each run (numpy aligns large arrays to 16 bytes).
That copy cost MobileNetV2 2.6% of a run. This pass declares the buffers through which kernels read a model input
aligned to their element size only, so the runtime can hand the kernels the caller's array (zero copy).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, tirx

from .relax_util import model_inputs

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _input_reads(main: relax.Function) -> list[tuple[tvm.ir.GlobalVar, int]] | None:
    """(kernel, parameter index) of each kernel argument that is a model input or a view of one; None when an
    input reaches anything else that could keep or write its memory (an in-place kernel, a packed call)."""
    derived = set(model_inputs(main))  # weights lifted into parameters stay 64-byte aligned
    reads = []
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not any(v in derived for v in relax.analysis.free_vars(value)):
                continue
            if isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR):
                if not isinstance(value.args[1], relax.Tuple):
                    return None
                reads += [(value.args[0], i) for i, arg in enumerate(value.args[1].fields) if arg in derived]
            elif isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and not \
                    value.op.name.startswith("relax.call"):
                derived.add(binding.var)  # a view (reshape) or other op on the input: its result may alias it
            else:
                return None
    if any(v in derived for v in relax.analysis.free_vars(main.body.body)):
        return None  # an input (or a view of it) is returned as an output
    return reads


def _element_aligned(func: tirx.PrimFunc, index: int) -> tirx.PrimFunc:
    """FUNC with parameter INDEX's buffer declared aligned to its element size only."""
    old = func.params[index]
    new = tirx.decl_buffer(old.shape, old.dtype, old.name, data=old.data, strides=old.strides,
                           elem_offset=old.elem_offset, scope=old.scope(),
                           data_alignment=max(1, old.dtype.bits // 8), offset_factor=old.offset_factor)
    return tvm_ffi.structural_map(func, [(tirx.Buffer, lambda b: new if b.same_as(old) else b)], order="pre")


def read_inputs_in_place(report: dict) -> tvm.transform.Pass:
    """Pass: the kernels reading a model input accept it at any element-aligned address. Sets
    REPORT['input_alignment'] to the alignment in bytes the compiled main then needs of its inputs' data (64 when
    the inputs reach something this pass does not follow; the runtime then copies them)."""

    @tvm.transform.module_pass(opt_level=0, name="kiln.ReadInputsInPlace")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        report["input_alignment"] = 64
        reads = _input_reads(mod["main"])
        if reads is None:
            return mod
        for gvar, index in reads:
            mod[gvar] = _element_aligned(mod[gvar], index)
        report["input_alignment"] = max((mod[g].params[i].data_alignment for g, i in reads), default=1)
        return mod

    return _pass
