"""Time each fused kernel of a loaded artifact on its own (`kiln run --profile`).

Kernels are timed one at a time with random arguments of the shapes the manifest records, warm in cache, so
the figures rank kernels rather than add up exactly to a whole run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .errors import KilnError
from .tvm_runtime import to_device, tvm_package


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
