"""`kiln tune`: search faster schedules for a model's kernels and append them to the target's database.

Search: MetaSchedule's evolutionary search with its XGBoost cost model, over the union of two design spaces: Kiln's
default schedule with its tile sizes left to the tuner (schedules.tuning_space) and MetaSchedule's generic CPU
space. Kiln's default schedule of each kernel is measured and recorded first, so the search starts from it and a
tuned kernel is never slower than the default one. Trials go to kernels by their share of the model's work
(weight x FLOPs); kernels with a negligible share keep their default schedules. Candidates run with the thread
count the model will run with, timed cold by default (weights flushed from the caches first: measure.EVALUATORS).
Progress is saved after every batch (records in the database, trials per kernel in kiln_tuning.json): a killed
tune loses at most the batch in flight and the next one resumes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import tvm
from tvm.s_tir import meta_schedule as ms

import runtime
from runtime.errors import KilnError
from runtime.scratch import scratch_dir, sweep

from ..build.schedule import kernel_mflop
from ..passes.relax_util import is_scheduled
from ..schedules import default_schedule, fixed_schedule, tuning_space
from ..targets import TargetPreset
from ..tvmscript import import_tensor_intrinsics
from . import database as tuning
from . import measure
from .metaschedule import BatchCallback, BudgetScheduler
from .state import TaskState, TuneSummary, allocate
from .stop import StopSignal

log = logging.getLogger(__name__)

BATCH = 32  # candidates measured per round of the search
WARM_START_RECORDS = 256  # records per kernel the cost model is trained on before a resumed search
CONFIRM_ROUNDS = 3  # paired timings of best record vs default schedule per kernel after the search
TIE_RATIO = 0.999  # a default as fast as the best record is recorded this much faster, so it ranks first


def evolutionary_search(trials: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search with a population for TRIALS: MetaSchedule's 512 for 64 trials or more,
    fewer for a short search (each round samples, mutates and ranks the whole population: with 512, a tune of 8
    trials spent 25 s of its 45 choosing 8 candidates)."""
    return ms.search_strategy.EvolutionarySearch(population_size=max(64, min(512, 8 * trials)))


def default_trials(preset: TargetPreset, kernels: int) -> int:
    """Trials when neither --trials nor --minutes is given: the preset's trials per kernel for each kernel."""
    return int(preset.tuning.get("trials_per_task", 64)) * max(1, kernels)


class Tuner:
    """One `kiln tune` run over one model for one target preset."""

    def __init__(self, preset: TargetPreset, folder: Path, threads: int, workers: int,
                 rpc: str | None, key: str | None, devices: int, report: Callable[[TuneSummary, str], None],
                 cache: str = measure.DEFAULT_CACHE):
        self.preset = preset
        self.folder = folder
        self.threads = threads
        self.cache = cache  # how candidates are timed: 'cold' / 'warm' (measure.EVALUATORS)
        self.target = tvm.target.Target({**preset.tvm_target, "num-cores": threads})
        self.builder = measure.make_builder(preset, workers)
        self.runner = measure.make_runner(threads, rpc, key, devices, cache)
        self.report = report
        self.notes = tuning.read_notes(folder)
        written_by = tuning.other_tvm_version(folder)
        if written_by:
            raise KilnError(f"tuning log {folder} was written by TVM {written_by}, this is TVM {tvm.__version__}",
                            "tune into another folder with --log DIR, or move the old one away")
        tuning.check_target(folder, preset)
        measured_with = self.notes.get("threads")
        if measured_with and int(measured_with) != threads:
            raise KilnError(f"tuning log {folder} was measured with {measured_with} thread(s), not {threads}",
                            f"tune with --threads {measured_with}, or into another folder with --log DIR")
        self.database = tuning.open_database(folder, create=True)

    def _save_notes(self, tasks: list[TaskState]) -> None:
        known = self.notes.setdefault("tasks", {})
        for task in tasks:
            known[task.key] = {"name": task.name, "trials": task.trials, "default_us": task.default_us,
                               "best_us": task.best_us, "mflop": task.mflop, "cache": task.cache}
        self.notes.update(target=self.preset.name, tvm_target=dict(self.preset.tvm_target),
                          tvm_version=tvm.__version__, kiln_version=runtime.__version__, threads=self.threads)
        tuning.write_notes(self.folder, self.notes)

    def tasks(self, mod: tvm.IRModule) -> tuple[list[TaskState], list]:
        """The model's kernels as TaskStates (with what earlier runs recorded) and MetaSchedule's tasks."""
        extracted = [task for task in ms.relax_integration.extract_tasks(mod, self.target)
                     if not is_scheduled(task.dispatched[0]["main"])]  # Kiln's loop kernels: nothing to search
        states = []
        for task in extracted:
            key = tuning.workload_key(task.dispatched[0])
            seen = self.notes.get("tasks", {}).get(key, {})
            timed = seen.get("default_us") is not None or int(seen.get("trials", 0)) > 0
            states.append(TaskState(key=key, name=task.task_name, weight=int(task.weight),
                                    mflop=kernel_mflop(task.dispatched[0]["main"]) or 0.0,
                                    fixed=self._fixed(task.dispatched[0]),
                                    trials=int(seen.get("trials", 0)),
                                    default_us=seen.get("default_us"), best_us=seen.get("best_us"),
                                    cache=seen.get("cache") or (measure.LEGACY_CACHE if timed else None)))
        return states, extracted

    def retime_timed_otherwise(self, summary: TuneSummary, states: list[TaskState], task_mods: list) -> None:
        """Kernels of STATES about to be searched whose records were timed with the other cache setting: their
        best records (as many as the preset keeps per kernel) are timed again this way, in one batch, and replace
        all their records (cold and warm times cannot rank in one list: warm ones would always win), and their
        search starts over from those.
        Dropping them instead threw good schedules away: BERT-base searched cold for 10 minutes from scratch ran
        3% slower than its earlier warm records timed cold."""
        stale = [(s, m) for s, m in zip(states, task_mods) if s.budget > 0 and s.cache not in (None, self.cache)]
        if not stale:
            return
        self.report(summary, f"timing the best records of {len(stale)} kernel(s) again {self.cache} (they were "
                             f"timed {stale[0][0].cache}); their search starts over from them")
        keep = int(self.preset.tuning.get("keep_records", 4))
        schedules = [[record.as_measure_candidate().sch
                      for record in self.database.get_top_k(self.database.commit_workload(mod), keep)]
                     for _state, mod in stale]
        timed, _errors = measure.measure_schedules(self.builder, self.runner,
                                                   [sch.mod for kernel in schedules for sch in kernel], self.target)
        tuning.drop_workloads(self.folder, {state.key for state, _mod in stale})
        self.database = tuning.open_database(self.folder, create=True)
        times = iter(timed)
        for (state, mod), kernel in zip(stale, schedules):
            records = [(sch.trace, run_secs) for sch, run_secs in zip(kernel, times) if run_secs]
            workload = self.database.commit_workload(mod)
            for trace, run_secs in records:
                self.database.commit_tuning_record(ms.database.TuningRecord(
                    trace, workload, run_secs=run_secs, target=self.target,
                    args_info=ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
            best = min((sum(t) / len(t) for _trace, t in records), default=None)
            state.trials, state.default_us, state.cache = 0, None, self.cache
            state.best_us = best * 1e6 if best is not None else None

    def _fixed(self, mod: tvm.IRModule) -> bool:
        """True when Kiln's schedule of MOD samples nothing (see fixed_schedule); the Winograd transforms' unrolled
        code is also slow to build (minutes per batch measured)."""
        return fixed_schedule(mod, self.preset.vector_lanes_fp32) is not None

    def seed(self, states: list[TaskState], task_mods: list[tvm.IRModule]) -> None:
        """Measure Kiln's default schedule of each kernel (one batch) and record it: the search starts from it."""
        lanes = self.preset.vector_lanes_fp32
        seeds = [(state, mod, default_schedule(mod, lanes, self.target)) for state, mod in zip(states, task_mods)]
        seeds = [(state, mod, sch) for state, mod, sch in seeds if sch is not None]
        timed, errors = measure.measure_schedules(self.builder, self.runner, [sch.mod for _s, _m, sch in seeds],
                                                  self.target)
        if seeds and all(t is None for t in timed):
            raise KilnError(f"no kernel could be built and timed on this target: {errors[0] if errors else '?'}",
                            "fix the measurement setup (rerun with --debug for every failure)")
        for (state, mod, sch), run_secs in zip(seeds, timed):
            if run_secs is None:
                log.warning("Kiln's default schedule of %s failed to build or run; searching without it", state.name)
                continue
            self.database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, self.database.commit_workload(mod), run_secs=run_secs, target=self.target,
                args_info=ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
            state.default_us = sum(run_secs) / len(run_secs) * 1e6
            state.cache = self.cache
            state.best_us = min(state.best_us or float("inf"), state.default_us)

    def warm_start(self, cost_model, contexts: list, tasks: list) -> int:
        """Train COST_MODEL on the records the database already holds for TASKS (an earlier run's
        measurements), so a resumed search predicts well from its first batch; returns how many were used."""
        used = 0
        for context, task in zip(contexts, tasks):
            records = self.database.get_top_k(self.database.commit_workload(task.dispatched[0]), WARM_START_RECORDS)
            if records:
                cost_model.update(context, [r.as_measure_candidate() for r in records],
                                  [ms.runner.RunnerResult(run_secs=r.run_secs, error_msg=None) for r in records])
                used += len(records)
        return used

    def confirm(self, summary: TuneSummary, todo: list) -> None:
        """Time each searched kernel's best record against Kiln's default schedule back to back (CONFIRM_ROUNDS
        times each, interleaved) and keep the better: where the default is as fast (the record won only because
        the machine was busy when the default was timed), the default is recorded as the best. The summary's
        times become these paired measurements."""
        for state, task in todo:
            mod = task.dispatched[0]
            workload = self.database.commit_workload(mod)
            top = self.database.get_top_k(workload, 1)
            default = default_schedule(mod, self.preset.vector_lanes_fp32, self.target)
            if not top or default is None:
                continue
            best = top[0].as_measure_candidate().sch.mod
            timed, _errors = measure.measure_schedules(self.builder, self.runner,
                                                       [best, default.mod] * CONFIRM_ROUNDS, self.target)
            best_runs = [sum(t) / len(t) for t in timed[0::2] if t]
            default_runs = [sum(t) / len(t) for t in timed[1::2] if t]
            if not best_runs or not default_runs:
                continue
            best_s, default_s = sorted(best_runs)[len(best_runs) // 2], sorted(default_runs)[len(default_runs) // 2]
            if best_s >= default_s:
                # The default becomes the kernel's best record. Its time goes on the records' own scale (the best
                # record's claim times the paired ratio): a busier machine now inflates both paired times alike,
                # and records compared by raw time against an inflated default would all look faster than it.
                ratio = min(default_s / best_s, TIE_RATIO)
                self.database.commit_tuning_record(ms.database.TuningRecord(
                    default.trace, workload, run_secs=[float(t) * ratio for t in top[0].run_secs],
                    target=self.target, args_info=ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
                log.info("%s: the default schedule is as fast as the best record; it ranks first now", state.name)
                best_s = default_s
            state.default_us, state.best_us = default_s * 1e6, best_s * 1e6
        self._save_notes(summary.tasks)

    def recheck(self, summary: TuneSummary, mod: tvm.IRModule) -> None:
        """Time the best record of every kernel searched before against Kiln's current default schedule and keep
        the faster (confirm), searching nothing: after an upgrade of Kiln's default schedules, a committed record
        may have become slower than the default it was searched from."""
        states, extracted = self.tasks(mod)
        summary.tasks = states
        summary.stopped = "rechecked"
        todo = [(s, t) for s, t in zip(states, extracted) if s.trials > 0 and not s.fixed]
        other = [s for s, _t in todo if s.cache != self.cache]
        if other:
            self.report(summary, f"leaving {len(other)} kernel(s) whose records were timed {other[0].cache} "
                                 f"(recheck them with --cache {other[0].cache})")
            todo = [(s, t) for s, t in todo if s.cache == self.cache]
        for state, _task in todo:
            state.budget = state.trials  # searched before, nothing left to search: counted in summary.searched
        started = time.monotonic()
        self.report(summary, f"rechecking the best schedules of {len(todo)} kernel(s) against the defaults")
        self.confirm(summary, todo)
        summary.seconds = time.monotonic() - started

    def run(self, summary: TuneSummary, mod: tvm.IRModule, trials: int | None, stop: StopSignal,
            seed: int | None) -> None:
        """Search until every kernel has its TRIALS (None: default_trials), or STOP says to (time, Ctrl-C)."""
        states, extracted = self.tasks(mod)
        summary.tasks = states
        if trials is None:
            allocate(states, 1)  # only to learn which kernels are worth searching
            trials = default_trials(self.preset, sum(1 for s in states if s.budget))
        allocate(states, trials)
        self.retime_timed_otherwise(summary, states, [task.dispatched[0] for task in extracted])
        todo = [(s, t) for s, t in zip(states, extracted) if s.remaining > 0]
        started = time.monotonic()
        if not todo:
            summary.stopped = "nothing to do"
            return
        unseeded = [(s, t.dispatched[0]) for s, t in todo if s.default_us is None]
        if unseeded:
            self.report(summary, f"measuring Kiln's default schedules of {len(unseeded)} kernel(s)")
            self.seed([s for s, _m in unseeded], [m for _s, m in unseeded])
        self._save_notes(states)
        if summary.model_ms("best_us") is not None:
            summary.curve.append((time.monotonic() - started, 0, summary.model_ms("best_us")))

        def on_batch(task_id: int, times: list[float | None]) -> None:
            state = todo[task_id][0]
            state.trials += len(times)
            state.cache = self.cache
            summary.trials_run += len(times)
            good = [t for t in times if t is not None]
            if good:
                state.best_us = min([*good, state.best_us or float("inf")])
            summary.seconds = time.monotonic() - started
            estimate = summary.model_ms("best_us")
            if estimate is not None:
                summary.curve.append((summary.seconds, summary.trials_run, estimate))
            self._save_notes(states)
            self.report(summary, "")
            stop.check()

        # MetaSchedule prints its task tables to stdout at its logger's level: keep them for -v / --debug only
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(max(logging.root.level, logging.DEBUG)
                                                             if logging.root.level <= logging.INFO else logging.WARNING)
        import_tensor_intrinsics()
        sweep(tempfile.gettempdir(), measure.KERNEL_DIRS)  # what a killed tune's builders left
        with scratch_dir("kiln-tune-") as work_dir:
            space = ms.space_generator.SpaceGeneratorUnion([
                ms.space_generator.ScheduleFn(tuning_space(self.preset.vector_lanes_fp32), sch_rules=[]),
                ms.space_generator.PostOrderApply()])
            # Built here rather than by extracted_tasks_to_tune_contexts, whose per-task log files break the
            # second time a process tunes (its logging config chokes on handlers it added the first time).
            contexts = [ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator=space,
                                       search_strategy=evolutionary_search(state.remaining), task_name=task.task_name,
                                       logger=logging.getLogger(f"kiln.tune.{task.task_name}"),
                                       rand_state=rand, num_threads=self.threads).clone()
                        for (state, task), rand in zip(todo, ms.utils.fork_seed(seed, n=len(todo)))]
            weights = [float(task.weight) for _s, task in todo]
            cost_model = ms.cost_model.XGBModel(num_tuning_cores=self.threads)
            self.warm_start(cost_model, contexts, [task for _s, task in todo])
            callbacks = [*ms.measure_callback.MeasureCallback.create("default"), BatchCallback(on_batch)]
            try:
                ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir,
                              max_trials_global=sum(s.remaining for s, _t in todo),
                              max_trials_per_task=max(s.remaining for s, _t in todo) + BATCH,
                              num_trials_per_iter=min(BATCH, max(8, min(s.remaining for s, _t in todo))),
                              builder=self.builder, runner=self.runner, database=self.database,
                              cost_model=cost_model,
                              measure_callbacks=callbacks,
                              task_scheduler=BudgetScheduler([s for s, _t in todo]))
                summary.stopped = "budget"
            except Exception:  # noqa: BLE001 - Stop arrives wrapped in a TVM error; anything else goes on up
                if stop.reason is None:
                    raise
                summary.stopped = stop.reason
        if summary.stopped != "interrupted":
            self.report(summary, f"confirming the best schedules of {len(todo)} kernel(s) against the defaults")
            self.confirm(summary, todo)
        summary.seconds = time.monotonic() - started
