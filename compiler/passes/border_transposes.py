"""Transposes at a model's border fused into the kernel next to them: those that write its output into the kernel
that computes what they move (kiln.FuseBorderTransposes), those that read its input into the depthwise
convolution that reads them (kiln.FuseInputTransposes).

A model whose convolutions Kiln computes in NHWC but whose output is NCHW ends in a transpose of the last
kernel's output: one more pass over it (56x56x144: 0.05 ms beside a 0.08 ms depthwise convolution). TVM's FuseOps
puts only elementwise and broadcast ops into a convolution's or matmul's epilogue. This pass labels such a border
transpose elementwise for FuseOps (after AnnotateTIROpPattern, before FuseOps), so it joins that epilogue and the
contraction schedule writes the register tile out transposed (compiler/schedules/common.fuse_epilogue).

On the input side FuseOps fuses nothing into a convolution. A single-op NCHW model's depthwise convolution ran
0.060 ms behind its input's transpose kernel, against ONNX Runtime's 0.037 (14x14x672, 5x5 stride 2); the two
kernels alone take 0.019 and 0.014 ms, but the convolution read the transpose's output from the other core's
cache. kiln.FuseInputTransposes (after FuseTIR) makes the pair one kernel where
compiler/schedules/transposed_input.py takes it: each core transposes the channels it convolves.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..schedules.contraction import is_copy
from ..schedules.injective import transposed_axis
from ..schedules.transposed_input import TransposedInput, is_nchw_to_nhwc
from .fuse_pairs import PairFuser
from .relax_util import mutator_pass, only_block, op_name, returned_fields

_CALL_TIR = "relax.call_tir"

ELEMWISE, BROADCAST, OUT_ELEMWISE_FUSABLE = 0, 1, 4


def _pattern(mod: tvm.IRModule, gvar) -> int | None:
    attrs = mod[gvar].attrs
    return int(attrs["op_pattern"]) if attrs is not None and "op_pattern" in attrs else None


def _is_transpose(func: tvm.tirx.PrimFunc) -> bool:
    """Whether FUNC is one block that copies its input with the innermost axis moved (transposed_axis)."""
    block = only_block(func)
    return block is not None and is_copy(block) and transposed_axis(block) is not None


def _first_argument(call):
    """The first tensor a call_tir passes its kernel (None when its arguments are not a tuple)."""
    return call.args[1].fields[0] if isinstance(call.args[1], relax.Tuple) else None


def border_transposes(mod: tvm.IRModule) -> list:
    """The transpose kernels of MOD's main whose result is an output of main and whose input a contraction (a
    kernel FuseOps lets take an elementwise epilogue) makes, maybe through elementwise or broadcast kernels."""
    main = mod["main"]
    bound = {b.var: b.value for block in main.body.blocks for b in block.bindings if op_name(b.value) == _CALL_TIR}
    calls: dict = {}
    for call in bound.values():
        calls[call.args[0]] = calls.get(call.args[0], 0) + 1
    found = []
    for var in set(returned_fields(main)):
        call = bound.get(var)
        if call is None or calls[call.args[0]] != 1 or not _is_transpose(mod[call.args[0]]):
            continue  # (a kernel called elsewhere too keeps its label: the others are not at the border)
        source = _first_argument(call)
        while source in bound and (_pattern(mod, bound[source].args[0]) or 0) <= BROADCAST:
            source = _first_argument(bound[source])
        if source in bound and _pattern(mod, bound[source].args[0]) == OUT_ELEMWISE_FUSABLE:
            found.append(call.args[0])
    return found


@tvm.transform.module_pass(opt_level=0, name="kiln.FuseBorderTransposes")
def fuse_border_transposes(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Label the border transposes (border_transposes) elementwise, so FuseOps fuses them into the epilogue of
    the contraction before them."""
    for gvar in border_transposes(mod):
        mod[gvar] = mod[gvar].with_attr("op_pattern", ELEMWISE)
    return mod


def fuse_input_transposes(lanes: int) -> tvm.transform.Pass:
    """kiln.FuseInputTransposes for a target of LANES fp32 lanes: a transpose kernel and the kernel that alone reads
    it, one kernel where TransposedInput schedules the pair (see the module docstring)."""
    return mutator_pass("kiln.FuseInputTransposes",
                        lambda mod: PairFuser(mod, TransposedInput(lanes), _nchw_to_nhwc))


def _nchw_to_nhwc(first: tvm.tirx.PrimFunc, _second: tvm.tirx.PrimFunc) -> bool:
    """Whether FIRST is one NCHW -> NHWC copy: the only transposes TransposedInput takes, tested before the pair is
    fused (attention's K^T transposes, in front of every matmul of a transformer, are not)."""
    block = only_block(first)
    return block is not None and is_nchw_to_nhwc(block)
