"""How `kiln tune` builds and times candidate kernels: the same TIR lowering as `kiln compile`, the model's thread
count, on this machine (a MetaSchedule LocalRunner) or on boards registered with a TVM RPC tracker (RPCRunner)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

from tvm.s_tir import meta_schedule as ms

from runtime.errors import KilnError
from runtime.scratch import stamped

log = logging.getLogger(__name__)

from ..targets import TargetPreset

KERNEL_DIRS = "kiln-kernel-"  # prefix of the folder each candidate kernel is built in (see runtime.scratch)
# How a candidate is timed (`kiln tune --cache`).
# cold: one call per timing, after its weights and output were flushed from the CPU caches (not its first
#   argument, the input, which the kernel before it has just written): how a batch-1 run meets each kernel, its
#   weights fresh from memory. Timed warm, ViT-B/16's 3072 -> 768 matmul took 2.83 ms and 3.34 ms inside whole
#   runs; the kernels searched cold made the model 10% faster than those searched warm.
# warm: calls repeated for at least 30 ms with everything cached (weights that stay in cache between runs:
#   small models, large batches).
EVALUATORS = {
    "cold": ms.runner.EvaluatorConfig(number=1, repeat=12, min_repeat_ms=0, enable_cpu_cache_flush=True),
    "warm": ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=30, enable_cpu_cache_flush=False),
}
DEFAULT_CACHE = "cold"
LEGACY_CACHE = "warm"  # how the records of notes that name no cache were timed (Kiln before `--cache`)
RUN_TIMEOUT_S = 30


def build_kernel(mod, target, _params):
    """MetaSchedule build function: lower as `kiln compile` does (its PassContext and TIR pipeline, scratch on the
    stack; runs in a builder worker).
    MetaSchedule's default_build also imports tvm.s_tir.tensor_intrin, which takes 15 s, and its builder starts
    fresh workers for every batch: that import cost more than the builds themselves."""
    import tvm  # noqa: PLC0415 - in the worker
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

    from ..build.lower import TIR_PIPELINE, lowering_context  # noqa: PLC0415

    with lowering_context():
        return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target,
                              pipeline=TIR_PIPELINE)


def export_kernel(rt_mod, cc: str, options: list[str]) -> str:
    """MetaSchedule export function: link with the preset's (cross) compiler into a temporary .so."""
    import tempfile  # noqa: PLC0415

    from tvm.support import cc as tvm_cc  # noqa: PLC0415

    # named for the tuning process (this worker's parent), so a killed tune's folders are swept by the next one
    path = os.path.join(tempfile.mkdtemp(prefix=stamped(KERNEL_DIRS, os.getppid())), "kernel.so")
    rt_mod.export_library(path, fcompile=tvm_cc.cross_compiler(cc, options=options))
    return path


def set_threads(threads: int) -> None:
    """Runner worker initializer: size TVM's thread pool as `runtime.load(threads=...)` does."""
    from runtime.tvm_runtime import set_num_threads  # noqa: PLC0415

    set_num_threads(threads)


def remote_evaluator(threads: int, session, rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """RPC run function: ask the board for THREADS threads and refuse to time with another count (the records
    would be for the wrong setting); then time as MetaSchedule does."""
    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_run_evaluator  # noqa: PLC0415

    session.get_function("runtime.config_threadpool")(1, threads)
    actual = int(session.get_function("runtime.NumThreads")())
    if actual != threads:
        raise RuntimeError(f"the board runs {actual} thread(s), not {threads}: start its RPC server with "
                           f"TVM_NUM_THREADS={threads}, or tune with --threads {actual}")
    return default_run_evaluator(session, rt_mod, device, evaluator_config, repeated_args)


def make_builder(preset: TargetPreset, workers: int) -> ms.builder.Builder:
    """Builder that compiles WORKERS candidates at a time and links them like `kiln compile` links artifacts."""
    export = functools.partial(export_kernel, cc=preset.export.get("cc", "g++"),
                               options=list(preset.export.get("options", [])))
    return ms.builder.LocalBuilder(max_workers=workers, f_build=build_kernel, f_export=export)


def parse_tracker(address: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with a clear error for anything else."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise KilnError(f"--rpc expects HOST:PORT of a TVM RPC tracker, got '{address}'",
                        "e.g. --rpc 127.0.0.1:9190 --key rpi4")
    return host, int(port)


def make_runner(threads: int, rpc: str | None = None, key: str | None = None,
                devices: int = 1, cache: str = DEFAULT_CACHE) -> ms.runner.Runner:
    """Runner timing candidates with THREADS threads and CACHE ('cold' / 'warm', see EVALUATORS): locally, or on
    DEVICES boards registered under KEY with the RPC tracker at RPC (HOST:PORT), which hands each measurement to
    a free board."""
    if cache not in EVALUATORS:
        raise KilnError(f"--cache must be one of {', '.join(EVALUATORS)}, got '{cache}'", "e.g. --cache cold")
    evaluator = EVALUATORS[cache]
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator,
                                     initializer=functools.partial(set_threads, threads))
    if not key:
        raise KilnError("--rpc needs --key: the device key the boards registered with", "e.g. --key rpi4")
    host, port = parse_tracker(rpc)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_priority=1,
                                 session_timeout_sec=RUN_TIMEOUT_S * 2)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=devices,
                               f_run_evaluator=functools.partial(remote_evaluator, threads))


def measure_schedules(builder, runner, mods: list, target) -> tuple[list[list[float] | None], list[str]]:
    """Build and time scheduled kernels MODS as one batch: each one's run times in seconds (None where it
    failed), and the last line of each failure's message."""
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods])
    errors = [b.error_msg.strip() for b in built if b.error_msg]
    runs = [(i, b) for i, b in enumerate(built) if not b.error_msg]
    times: list[list[float] | None] = [None] * len(mods)
    try:
        futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu",
                                                    ms.arg_info.ArgInfo.from_prim_func(mods[i]["main"]))
                              for i, b in runs])
        for (i, _b), future in zip(runs, futures):
            result = future.result()
            if not result.error_msg and result.run_secs:
                times[i] = [float(t) for t in result.run_secs]
            else:
                errors.append((result.error_msg or "no run times").strip())
    finally:
        for _i, b in runs:
            shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)
    for error in errors:
        log.debug("a candidate failed: %s", error)
    return times, [error.splitlines()[-1] for error in errors]
