"""Kiln's hooks into MetaSchedule's search loop: a callback that hands each measured batch to the tuner, and a
task scheduler that gives the next batch to the kernel furthest behind its budget."""

from __future__ import annotations

from typing import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .state import TaskState


@derived_object
class BatchCallback(ms.measure_callback.PyMeasureCallback):
    """Hands each measured batch to Kiln's tuner (after MetaSchedule has stored it in the database)."""

    def __init__(self, on_batch: Callable):
        super().__init__()
        self.on_batch = on_batch

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        times = [sum(float(t) for t in r.run_secs) / len(r.run_secs) * 1e6
                 if r.error_msg is None and r.run_secs else None for r in runner_results]
        self.on_batch(task_id, times)


@derived_object
class BudgetScheduler(ms.task_scheduler.PyTaskScheduler):
    """Next batch goes to the kernel furthest behind its own budget (TaskState.budget, spread by weight x FLOPs
    over this run and earlier ones); no kernel gets more than its budget. MetaSchedule's schedulers share one
    per-task cap, which cannot resume a tune where some kernels are done and others are not."""

    def __init__(self, states: list[TaskState]):
        super().__init__()
        self.states = states

    def next_task_id(self) -> int:
        for task_id in range(len(self.states)):
            ms.task_scheduler.TaskScheduler.touch_task(self._outer(), task_id)  # takes in finished batches
        records = self._outer().tasks_
        open_tasks = [i for i, s in enumerate(self.states) if s.remaining > 0 and not records[i].is_terminated]
        if not open_tasks:
            return -1
        task_id = min(open_tasks, key=lambda i: (self.states[i].trials / self.states[i].budget, -self.states[i].work))
        if records[task_id].measure_candidates is not None:  # a batch still on a remote board
            self.join_running_task(task_id)
        return task_id
