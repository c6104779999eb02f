"""Calibration: quantization parameters from observed ranges, the percentile and entropy methods, and
samples loaded from a folder."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.quantize import calibration
from compiler.quantize.fake_quant import QuantParams
from runtime.artifact import TensorSpec
from runtime.errors import KilnError


def test_quant_params_cover_the_range_and_zero():
    params = QuantParams.from_range(0.5, 10.0)  # widened to include 0
    assert params.zero_point == 0 and params.scale == pytest.approx(10.0 / 255)
    signed = QuantParams.from_range(-1.0, 3.0)
    assert signed.scale == pytest.approx(4.0 / 255) and signed.zero_point == round(1.0 / signed.scale)
    assert QuantParams(0.1, 0, -128, 127).as_uint8() == QuantParams(0.1, 128, 0, 255)


def test_percentile_and_entropy_clip_outliers(rng):
    observer = calibration.Observer()
    values = np.abs(rng.standard_normal(100_000)).astype(np.float32)
    values[0] = 1000.0  # one outlier
    observer.see_range(values)
    observer.see_histogram(values)
    assert observer.range("minmax") == (pytest.approx(float(values.min())), 1000.0)
    assert observer.range("percentile")[1] < 10.0
    assert 2.0 < observer.range("entropy")[1] < 1000.0


def test_load_samples_from_folder_and_errors(tmp_path):
    spec = [TensorSpec("x", "float32", [1, 3])]
    np.save(tmp_path / "a.npy", np.ones((1, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 1, 3), np.float32))  # a stack of 4 samples
    np.savez(tmp_path / "c.npz", x=np.full((1, 3), 2, np.float32))
    np.save(tmp_path / "d.npy", np.zeros((3, 3), np.float32))  # a batch of 3 for the batch-1 input
    samples = calibration.load_samples(str(tmp_path), spec)
    assert len(samples) == 9 and samples[5]["x"][0, 0] == 2 and samples[-1]["x"].shape == (1, 3)
    assert len(calibration.load_samples("random:5", spec)) == 5
    calib, held = calibration.split(samples)
    assert len(held) == 2 and len(calib) == 7
    np.save(tmp_path / "bad.npy", np.ones((2, 2), np.float32))
    with pytest.raises(KilnError, match=r"shape \[2, 2\].*expected \[1, 3\]"):
        calibration.load_samples(str(tmp_path), spec)
    with pytest.raises(KilnError, match="random:N"):
        calibration.load_samples("random:zero", spec)
