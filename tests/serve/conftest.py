"""The serving tests' shared model: a small CNN with a symbolic batch dim, compiled once for the package."""

from __future__ import annotations

import pytest

import compiler
from benchmarks.zoo import resnet
from tests.models import save


@pytest.fixture(scope="package")
def built(tmp_path_factory):
    """(onnx path, artifact path) of a small CNN with a symbolic batch dimension."""
    folder = tmp_path_factory.mktemp("serve")
    path = save(resnet((1,), width=8, size=16, classes=4, batch="N"), folder, "cnn")
    artifact = compiler.compile(path, target="auto", output=folder / "cnn.so")
    return path, artifact.path
