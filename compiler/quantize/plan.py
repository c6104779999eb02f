"""The int8 plan around int8.py (kiln.QuantizeInt8): calibrate on samples, measure the quantized model against
float32 on held-back samples, and pick the most sensitive sites to fall back to float32 when the drop is too
large. In: the simplified float graph and calibration samples. Out: a Plan (parameters per site)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tvm

from runtime.artifact import TensorSpec
from runtime.errors import KilnError

from . import calibration, int8
from .fake_quant import QuantParams

Runnable = Callable[..., object]  # a build loaded back (build.lower.LoadedBuild): model inputs -> its outputs
BuildVM = Callable[[tvm.IRModule], Runnable]  # a graph-stage module -> that module built and loaded


def _outputs(value) -> list[np.ndarray]:
    """A VM result (tensor or nested tuple) as a flat list of numpy arrays."""
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "Tuple"):
        return [array for item in value for array in _outputs(item)]
    return [value.numpy()]


def run(vm: Runnable, inputs: list[TensorSpec], sample: dict[str, np.ndarray]):
    """Call `main` of VM on SAMPLE (arrays by input name)."""
    return vm(*(tvm.runtime.tensor(np.ascontiguousarray(sample[i.name])) for i in inputs))


@dataclass
class Plan:
    """What calibration found: parameters per site, the sites ordered most sensitive first, and the float32
    outputs on the held-back samples that the quantized model is measured against."""

    params: dict[int, QuantParams]
    from_model: int  # sites quantized by the model itself (QDQ)
    method: str = "minmax"
    calibration_samples: int = 0
    held_back: list[dict] = field(default_factory=list)
    reference: list[list[np.ndarray]] = field(default_factory=list)
    sensitive_first: list[int] = field(default_factory=list)
    seconds: float = 0.0
    latency_ms: list[float] | None = None  # [int8, float32] on a held-back sample, when timed
    chosen: str = "int8"

    def measure(self, vm: Runnable, inputs: list[TensorSpec]) -> int8.Accuracy | None:
        """The quantized model (VM) against float32 on the held-back samples; None without them."""
        if not self.held_back:
            return None
        return int8.accuracy(self.reference, [_outputs(run(vm, inputs, s)) for s in self.held_back])

    def fallback(self, skip: frozenset[int]) -> frozenset[int] | None:
        """SKIP plus the next most sensitive sites (doubling each time: 1, 2, 4, ...); None when every site
        already runs in float32."""
        remaining = [i for i in self.sensitive_first if i not in skip]
        if not remaining:
            return None
        return skip | set(remaining[: max(1, len(skip))])

    def to_json(self) -> dict:
        return {"method": self.method, "calibration_samples": self.calibration_samples,
                "held_back_samples": len(self.held_back), "sites_from_model": self.from_model,
                "calibration_seconds": round(self.seconds, 2),
                "latency_ms": dict(zip(("int8", "float32"), self.latency_ms)) if self.latency_ms else None}


def from_model(stage: tvm.IRModule) -> Plan | None:
    """The plan of a model that carries its own quantization (QDQ): no calibration; None for a float model."""
    given = int8.model_params(stage)
    return Plan(given, len(given)) if given else None


def calibrate(stage: tvm.IRModule, inputs: list[TensorSpec], spec: str, method: str, build_vm: BuildVM,
              say: Callable[[str], None]) -> Plan:
    """Run the float32 model over the calibration samples named by SPEC, collecting each site's input range
    (METHOD: calibration.METHODS) and the float32 outputs on the held-back share."""
    if method not in calibration.METHODS:
        raise KilnError(f"unknown calibration method '{method}'", f"use one of {', '.join(calibration.METHODS)}")
    started = time.perf_counter()
    given = int8.model_params(stage)
    calls = int8.sites(stage)
    if not calls:
        raise KilnError("the model has no convolution or matmul that Kiln can run in int8",
                        "compile it without --quantize")
    wanted = [i for i in range(len(calls)) if i not in given]
    samples = calibration.load_samples(spec, inputs)
    calib, held = calibration.split(samples)
    say(f"calibrating {len(wanted)} sites on {len(calib)} samples ({method}), {len(held)} held back")
    vm = build_vm(int8.with_site_inputs(stage, wanted))
    observers = [calibration.Observer() for _ in wanted]
    for sample in calib:
        for observer, value in zip(observers, _outputs(run(vm, inputs, sample))[-len(wanted):]):
            observer.see_range(value)
    params = dict(given)
    minmax = {i: QuantParams.from_range(o.low, o.high) for i, o in zip(wanted, observers)}
    noise = {i: 0.0 for i in range(len(calls))}
    for sample in calib:  # second pass: histograms, and the activation noise each grid leaves
        for i, observer, value in zip(wanted, observers, _outputs(run(vm, inputs, sample))[-len(wanted):]):
            observer.see_histogram(value)
            noise[i] += _activation_noise(value, minmax[i]) / len(calib)
    for i, observer in zip(wanted, observers):
        params[i] = QuantParams.from_range(*observer.range(method))
    reference = [_outputs(run(vm, inputs, s))[: -len(wanted) or None] for s in held]
    for i, call in enumerate(calls):
        noise[i] += int8.weight_noise(call)
    order = sorted(noise, key=lambda i: -noise[i])
    return Plan(params, len(given), method, len(calib), held, reference, order, time.perf_counter() - started)


def _activation_noise(x: np.ndarray, params: QuantParams) -> float:
    """Relative energy of X's quantization error on the grid PARAMS."""
    q = np.clip(np.round(x / params.scale) + params.zero_point, params.qmin, params.qmax)
    error = (q - params.zero_point) * params.scale - x
    return float(np.sum(error.astype(np.float64) ** 2) / max(np.sum(x.astype(np.float64) ** 2), 1e-30))
