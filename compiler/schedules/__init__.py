"""Kiln's default CPU schedules: what a kernel gets when no tuned record exists for it."""

from __future__ import annotations

from tvm.s_tir import dlight as dl

from .contraction import Contraction
from .injective import Injective


def default_rules(lanes: int) -> list:
    """Rules tried in order on each unscheduled kernel; LANES is the target's fp32 vector width."""
    return [Contraction(lanes), Injective(lanes), dl.cpu.GEMV(), dl.cpu.Reduction()]
