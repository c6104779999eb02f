"""Kiln's default CPU schedules: what a kernel gets when no tuned record exists for it.

In: one fused TIR kernel (compiler/build/schedule.py hands them over one by one). Out: the kernel scheduled by the
first rule of default_rules that takes it (dlight's CPU rules last), or its tuning space (tuning_space) for
`kiln tune`. contraction.py + tiles.py: convolutions, matmuls, pooling; dot_product.py and amx.py: the int8 /
bf16 kernels; winograd.py: the Winograd transforms; row_strips.py: fused conv + depthwise strips;
transposed_input.py + transpose_tile.py: a transpose fused into the depthwise convolution after it; injective.py:
elementwise, transposes, copies; common.py what they share. docs/schedules.md has the measurements behind them.
"""

from __future__ import annotations

import logging

from tvm import s_tir
from tvm.s_tir import dlight as dl

from .amx import AMXContraction
from .common import root_blocks
from .contraction import Contraction
from .dot_product import DotProductContraction
from .injective import Injective
from .row_strips import RowStrips
from .transposed_input import TransposedInput
from .winograd import WinogradTransform

log = logging.getLogger(__name__)


def default_rules(lanes: int) -> list:
    """Rules tried in order on each unscheduled kernel; LANES is the target's fp32 vector width."""
    return [WinogradTransform(lanes), RowStrips(lanes), TransposedInput(lanes), AMXContraction(lanes),
            DotProductContraction(lanes), Contraction(lanes),
            Injective(lanes),
            dl.cpu.GEMV(), dl.cpu.Reduction()]


def tuning_space(lanes: int):
    """A MetaSchedule schedule function (for ms.space_generator.ScheduleFn): Kiln's default schedule of the kernel
    with its tile sizes as sampling instructions, so the tuner starts from the default and mutates the tiles.
    Returns no schedule for a kernel no Kiln rule fits (MetaSchedule's generic space still covers it)."""
    rules = [WinogradTransform(lanes), RowStrips(lanes), TransposedInput(lanes), AMXContraction(lanes),
             DotProductContraction(lanes), Contraction(lanes, tunable=True), Injective(lanes)]

    def space(sch: s_tir.Schedule) -> list[s_tir.Schedule]:
        for rule in rules:
            trial = sch.copy()
            try:
                blocks = root_blocks(trial)  # raises on kernels without blocks (extern sort / scan calls)
                if not blocks:
                    return []
                if rule.schedule(trial, blocks) is not None:
                    return [trial]
            except (s_tir.ScheduleError, RuntimeError) as err:  # as KilnRule.apply: the next rule takes it
                log.debug("%s does not schedule this kernel: %s", type(rule).__name__, str(err).splitlines()[:1])
                continue
        return []

    return space


def fixed_schedule(mod, lanes: int) -> s_tir.Schedule | None:
    """Kiln's schedule of the one kernel in MOD when it samples nothing (the Winograd transforms, memory-bound
    streaming kernels), else None. Such a kernel is neither searched nor taken from a tuning database: a search
    could only re-time it, and a record left from an older schedule would override the current one."""
    found = tuning_space(lanes)(s_tir.Schedule(mod))
    if found and not any(inst.kind.name.startswith("Sample") for inst in found[0].trace.insts):
        return found[0]
    return None


def default_schedule(mod, lanes: int, target) -> s_tir.Schedule | None:
    """The schedule `kiln compile` gives the one kernel in MOD when it has no tuned record, as a traced schedule
    whose trace replays on MOD (so it can be stored as a tuning record): Kiln's rules first (tiles as sampling
    instructions, see tuning_space), then TVM's dlight rules, in default_rules' order. None when no rule fits."""
    found = tuning_space(lanes)(s_tir.Schedule(mod))
    if found:
        return found[0]
    with target:
        for rule in (dl.cpu.GEMV(), dl.cpu.Reduction()):
            scheduled = rule.apply(mod["main"], target, False)
            if scheduled is not None:
                return scheduled[0] if isinstance(scheduled, list) else scheduled
    return None
