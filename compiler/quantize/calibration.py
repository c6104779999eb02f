"""Calibration data and activation ranges: load the samples, split off a hold-back set, and turn observed
activations into quantization ranges (min/max, percentile, or entropy / KL divergence)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.artifact import TensorSpec
from runtime.bench import random_inputs
from runtime.errors import KilnError

METHODS = ("minmax", "percentile", "entropy")
PERCENTILE = 99.99  # of |activations| kept by the percentile method
BINS = 2048  # histogram resolution for percentile and entropy
QUANT_LEVELS = 128  # the entropy method's target resolution (levels of a 7-bit magnitude)
HOLD_BACK_SHARE = 0.2


def load_samples(spec: str, inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """The calibration samples named by SPEC: 'random:N' (N seeded random inputs), or a folder of .npz files
    (one sample each, arrays by input name) and/or .npy files (single-input models: one sample each, a stack of
    samples along a new leading axis, or for a batch-1 input a batch of N images split into N samples)."""
    if spec.startswith("random:"):
        count = spec.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise KilnError(f"bad calibration spec '{spec}'", "use random:N with N >= 1, or a folder of .npy/.npz")
        return [random_inputs(inputs, seed=i) for i in range(int(count))]
    folder = Path(spec)
    if not folder.is_dir():
        raise KilnError(f"calibration folder {spec} does not exist", "give a folder of .npy/.npz samples, or random:N")
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".npz":
            with np.load(path) as data:
                samples.append(_check_sample({k: data[k] for k in data.files}, inputs, path))
        elif path.suffix == ".npy":
            samples.extend(_npy_samples(np.load(path), inputs, path))
    if not samples:
        raise KilnError(f"calibration folder {spec} holds no .npy or .npz files", "add samples, or use random:N")
    return samples


def _npy_samples(array: np.ndarray, inputs: list[TensorSpec], path: Path) -> list[dict[str, np.ndarray]]:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise KilnError(f"{path.name}: a .npy sample only fits a single-input model (this one has {names})",
                        "save each sample as .npz with one array per input name")
    spec = inputs[0]
    rank = len(spec.shape)
    stacked = array if array.ndim == rank + 1 else array[None] if array.ndim == rank else None
    if array.ndim == rank and rank and spec.shape[0] == 1 and array.shape[0] > 1 and all(
            not isinstance(d, int) or d == v for d, v in zip(spec.shape[1:], array.shape[1:])):
        stacked = array[:, None]  # a batch of N samples for a batch-1 input: N samples
    if stacked is None:
        raise KilnError(f"{path.name} has shape {list(array.shape)}; input '{spec.name}' is {spec.shape}",
                        "save samples with the input's shape (or a stack of them)")
    return [_check_sample({spec.name: s}, inputs, path) for s in stacked]


def _check_sample(sample: dict, inputs: list[TensorSpec], path: Path) -> dict[str, np.ndarray]:
    missing = [i.name for i in inputs if i.name not in sample]
    if missing:
        raise KilnError(f"{path.name} lacks input(s) {', '.join(missing)}", "store one array per model input")
    out = {}
    for spec in inputs:
        value = sample[spec.name]
        if value.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != v for d, v in zip(spec.shape, value.shape)):
            raise KilnError(f"{path.name}: input '{spec.name}' has shape {list(value.shape)}, expected {spec.shape}",
                            "save samples with the model's input shape")
        out[spec.name] = value.astype(spec.dtype)
    return out


def split(samples: list) -> tuple[list, list]:
    """(calibration, hold-back): about HOLD_BACK_SHARE held back for measuring accuracy, at least one sample when
    there are two or more; a single sample serves both."""
    if len(samples) < 2:
        return samples, samples
    held = max(1, int(round(len(samples) * HOLD_BACK_SHARE)))
    return samples[:-held], samples[-held:]


@dataclass
class Observer:
    """Running statistics of one activation tensor over the calibration samples."""

    low: float = np.inf
    high: float = -np.inf
    histogram: np.ndarray | None = None  # of |x| over [0, limit], filled by a second pass
    limit: float = 0.0

    def see_range(self, x: np.ndarray) -> None:
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))

    def see_histogram(self, x: np.ndarray) -> None:
        if self.histogram is None:
            self.limit = max(abs(self.low), abs(self.high)) or 1.0
            self.histogram = np.zeros(BINS, np.int64)
        counts, _ = np.histogram(np.abs(x), bins=BINS, range=(0.0, self.limit))
        self.histogram += counts

    def range(self, method: str) -> tuple[float, float]:
        """The (low, high) the quantization grid should cover."""
        if method == "minmax" or self.histogram is None or not self.histogram.any():
            return self.low, self.high
        threshold = _percentile_threshold(self.histogram, self.limit) if method == "percentile" \
            else _entropy_threshold(self.histogram, self.limit)
        return max(self.low, -threshold), min(self.high, threshold)


def _percentile_threshold(histogram: np.ndarray, limit: float) -> float:
    cumulative = np.cumsum(histogram) / histogram.sum()
    index = int(np.searchsorted(cumulative, PERCENTILE / 100.0))
    return (index + 1) * limit / len(histogram)


def _entropy_threshold(histogram: np.ndarray, limit: float) -> float:
    """The clipping threshold whose QUANT_LEVELS-level quantization of |x| loses the least information (KL
    divergence between the clipped histogram and its quantized form, as TensorRT's entropy calibration)."""
    hist = histogram.astype(np.float64)
    best, best_bins = np.inf, len(hist)
    for bins in range(QUANT_LEVELS, len(hist) + 1, 16):
        reference = hist[:bins].copy()
        reference[-1] += hist[bins:].sum()
        chunks = np.array_split(np.arange(bins), QUANT_LEVELS)
        quantized = np.zeros(bins)
        for chunk in chunks:
            part = hist[chunk]
            nonzero = part > 0
            if nonzero.any():
                quantized[chunk[nonzero]] = part.sum() / nonzero.sum()
        p, q = reference / reference.sum(), quantized / max(quantized.sum(), 1e-12)
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best:
            best, best_bins = divergence, bins
    return best_bins * limit / len(hist)
