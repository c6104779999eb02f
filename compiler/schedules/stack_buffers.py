"""Tile buffers on the stack: every "local"-scope buffer of a scheduled CPU kernel becomes a "global"-scope one.

On the CPU the two scopes are the same memory, but TVM's lowering (LowerTVMBuiltin) keeps only "global" buffers of
constant size under 1 KB as stack slots; a "local" one becomes a TVMBackendAllocWorkspace / FreeWorkspace pair
(and a memset of its init) in whichever loop holds it. A register tile's accumulators live inside the parallel
loop, so that was two calls into the runtime's workspace pool per tile: 896 tiles of a 1x1 convolution
(ResNet-50's 256 -> 1024 at 14x14) spent 5-7% of the kernel's 0.30 ms there. Kiln's own rules, dlight's
reductions and some tuned records write their tiles through cache_write(..., "local"); this pass runs on what
all of them produced.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.stmt import SBlockRealize


def _local_writes(sch: s_tir.Schedule, block) -> list[int]:
    """Indices of BLOCK's write buffers that have "local" scope."""
    return [i for i, region in enumerate(sch.get(block).writes) if region.source.scope() == "local"]


def _blocks(sch: s_tir.Schedule, parent) -> list:
    """Every block under PARENT, depth first."""
    found = []
    for child in sch.get_child_blocks(parent):
        found.append(child)
        found.extend(_blocks(sch, child))
    return found


def locals_on_stack(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """FUNC with each "local" buffer that a block writes set to "global" scope (FUNC itself when it has none)."""
    if not isinstance(func.body, SBlockRealize):
        return func
    sch = s_tir.Schedule(func)
    try:  # extern kernels (sort, scan) have a root block of another name, or several blocks of one name
        root = sch.get_sblock(func.body.block.name_hint)
    except s_tir.ScheduleError:
        return func
    changed = False
    for block in _blocks(sch, root):
        for index in _local_writes(sch, block):
            sch.set_scope(block, index, "global")
            changed = True
    return sch.mod["main"] if changed else func


def locals_on_stack_in(mod: tvm.IRModule) -> tvm.IRModule:
    """MOD with locals_on_stack applied to every scheduled kernel (keeps each kernel's attributes)."""
    mod = mod.clone()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc):
            mod[gv] = locals_on_stack(func)
    return mod
