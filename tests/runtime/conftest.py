"""The runtime tests' shared artifact: a convolution with a symbolic batch dim, compiled once for the package (48
output channels: its 5 KB of weights are lifted out of the library and mapped at load)."""

import numpy as np
import pytest

import compiler
from tests.models import save, single_op_model


@pytest.fixture(scope="package")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rt")
    w = np.random.default_rng(4).standard_normal((48, 3, 3, 3)).astype(np.float32)
    path = save(single_op_model("Conv", {"x": ["batch", 3, 8, 8]}, weights={"w": w}, pads=[1, 1, 1, 1]), folder)
    return compiler.compile(path, output=folder / "conv.so").path
