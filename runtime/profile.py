"""Time each fused kernel of a loaded artifact (`kiln run --profile`), two ways.

In whole runs (time_in_runs): the VM calls a hook before and after each kernel, which reads the clock; the
figures add up to the run, with the caches as the model leaves them, so a kernel whose weights come from memory
each run shows it. Alone (profile_kernels): each kernel called over and over with random arguments of the
shapes the manifest records, warm in cache, as a tuner times it. The two differ most for kernels with many
weights per row of output (at batch 1: dense layers, late convolutions, Winograd GEMMs of few tiles).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import KilnError
from .tvm_runtime import runtime_ffi, to_device, tvm_package


@dataclass
class KernelTime:
    """One kernel: calls per run, time per call, and its share of the summed kernel time."""

    kernel: str
    calls: int
    ms_per_call: float
    share: float = 0.0

    @property
    def ms_per_run(self) -> float:
        return self.calls * self.ms_per_call


def _arg(spec: dict, dims: dict[str, int], rng: np.random.Generator, device):
    # Not runtime.bench.random_inputs: an integer argument of a kernel may be an index into another argument,
    # so integers stay 0 or 1 here, always in bounds.
    shape = [d if isinstance(d, int) else dims.get(d, 1) for d in spec["shape"]]
    dtype = np.dtype(spec["dtype"])
    data = rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)
    return to_device(np.asarray(data).astype(dtype), device)


def profile_kernels(model, dims: dict[str, int] | None = None, repeat: int = 10) -> list[KernelTime]:
    """Per-kernel times of MODEL, heaviest first; DIMS gives the symbolic dims (default 1)."""
    calls = model.manifest.kernels.get("calls")
    if not calls:
        raise KilnError(f"{model.path} records no kernel calls", "recompile it with this version of Kiln")
    library = model.library.imports[0] if model.library.imports else model.library
    counts = Counter(call["kernel"] for call in calls)
    first = {call["kernel"]: call for call in reversed(calls)}
    rng = np.random.default_rng(0)
    times = []
    for kernel, call in first.items():
        args = [_arg(spec, dims or {}, rng, model.device) for spec in call["args"]]
        timer = tvm_package().runtime.Module.time_evaluator(library, kernel, model.device, number=repeat, repeat=3)
        times.append(KernelTime(kernel, counts[kernel], timer(*args).median * 1e3))
    total = sum(t.ms_per_run for t in times) or 1.0
    for t in times:
        t.share = t.ms_per_run / total
    return sorted(times, key=lambda t: -t.ms_per_run)


def time_in_runs(model, feeds: dict, runs: int = 5) -> dict[str, float]:
    """Milliseconds per run that each kernel of MODEL takes inside whole runs on FEEDS (inputs by name), by
    kernel name; the VM's own builtins (allocation, shape checks) are left out. The hook costs about a
    microsecond per call, counted outside the kernels."""
    model.run(feeds)  # warm: weights mapped, pools sized
    spent: dict[str, float] = defaultdict(float)
    started = [0.0]

    def hook(_func, symbol, before_run, _result, *_args) -> int:
        now = time.perf_counter()
        if before_run:
            started[0] = now
        elif not symbol.startswith("vm.builtin."):
            spent[symbol] += now - started[0]
        return 0  # VMInstrumentReturnKind: carry on

    instrument = model._vm["set_instrument"]
    instrument(runtime_ffi().convert(hook))
    try:
        for _ in range(runs):
            model.run(feeds)
    finally:
        instrument(None)
    return {kernel: seconds * 1e3 / runs for kernel, seconds in spent.items()}
