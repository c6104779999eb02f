"""Kernel scratch on the stack: a TIR pass, run just before TVM lowers the host code's allocations
(LowerTVMBuiltin), that marks each small fixed-size "global" or "local" buffer of a CPU kernel (register tiles'
sums, tile configurations, per-task staging) to stay a stack slot.

Left alone, TVM keeps only "global" buffers under 1 KB on the stack; any other becomes a TVMBackendAllocWorkspace /
FreeWorkspace pair where it lives, and a register tile lives inside the parallel loop: two calls into the
runtime's workspace pool (a sorted vector it searches and shifts) per task. Worse, LLVM cannot keep sums that live
in memory it got from a call in registers: each step of a register tile of 16 or more vectors loaded and stored
its sums. On the stack the buffer is the function's own, and LLVM promotes a tile indexed by unrolled loops to
registers (MobileNetV2 int8's VNNI expansions 0.22 -> 0.12 ms).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx
from tvm.tirx import stmt as S

# Per buffer: register tiles are 1-2 KB; larger blocks (AMX sums, im2col rows) gain nothing on the stack, and a
# thread of an embedding application may have a small one.
MAX_STACK_BYTES = 8 << 10
_KEEP = "disable_lower_builtin"  # the annotation LowerTVMBuiltin leaves on the stack


def _bytes(buffer) -> int | None:
    """Size in bytes of BUFFER when its shape is constant, else None."""
    extents = [int(d) if isinstance(d, (int, tirx.IntImm)) else None for d in buffer.shape]
    if any(e is None for e in extents):
        return None
    dtype = tvm.runtime.DataType(buffer.dtype)
    return int(np.prod(extents, dtype=np.int64)) * dtype.bits * dtype.lanes // 8


def _on_stack(stmt):
    """STMT with each small constant-size "global" or "local" allocation marked to stay on the stack."""
    if isinstance(stmt, S.AllocBuffer):
        size = _bytes(stmt.buffer)
        # an empty buffer (a kernel over an empty axis) is no stack slot: LLVM's code generator refuses size 0
        if stmt.buffer.scope() not in ("global", "local") or not size or size > MAX_STACK_BYTES:
            return stmt
        return S.AllocBuffer(stmt.buffer, {**stmt.annotations, _KEEP: tirx.IntImm("int32", 1)}, stmt.span)
    if isinstance(stmt, S.SeqStmt):
        seq = [_on_stack(s) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else S.SeqStmt(seq, stmt.span)
    if isinstance(stmt, S.For):
        body = _on_stack(stmt.body)
        return stmt if body.same_as(stmt.body) else S.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                                                         stmt.thread_binding, stmt.annotations, stmt.step,
                                                         stmt.span)
    if isinstance(stmt, S.AttrStmt):
        body = _on_stack(stmt.body)
        return stmt if body.same_as(stmt.body) else S.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body,
                                                               stmt.span)
    if isinstance(stmt, S.IfThenElse):
        then_case = _on_stack(stmt.then_case)
        else_case = _on_stack(stmt.else_case) if stmt.else_case is not None else None
        if then_case.same_as(stmt.then_case) and (else_case is None or else_case.same_as(stmt.else_case)):
            return stmt
        return S.IfThenElse(stmt.condition, then_case, else_case, stmt.span)
    if isinstance(stmt, S.While):
        body = _on_stack(stmt.body)
        return stmt if body.same_as(stmt.body) else S.While(stmt.condition, body, stmt.span)
    return stmt


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="kiln.StackScratch")
def StackScratch(func, _mod, _ctx):  # noqa: N802 (a pass, named as TVM's)
    """Mark FUNC's small constant-size scratch buffers to be stack allocations (see the module docstring)."""
    body = _on_stack(func.body)
    return func if body.same_as(func.body) else func.with_body(body)
