"""Shared by the quantization tests: the targets they need (and skip markers for machines without them), a
tiny CNN, cosine similarity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from benchmarks.zoo import GraphBuilder
from compiler.targets import get_target

VNNI_TARGET = "x86-avx512"
needs_vnni = pytest.mark.skipif(not get_target(VNNI_TARGET).runs_here(),
                                reason="this machine cannot run x86-avx512 (AVX-512 VNNI) code")
AMX_TARGET = "x86-amx"
needs_amx = pytest.mark.skipif(not get_target(AMX_TARGET).runs_here(),
                               reason="this machine has no AMX tiles (amx_tile, amx_int8)")


def tiny_cnn(size: int = 16) -> onnx.ModelProto:
    """conv(3->16, stride 2)+BN+ReLU, a residual 3x3 conv(16->16), global pool, dense 16 -> 32 -> 10."""
    g = GraphBuilder(3)
    x = g.op("Relu", [g.bn(g.conv("input", 3, 16, 3, stride=2), 16)])
    y = g.op("Relu", [g.bn(g.conv(x, 16, 16, 3), 16)])
    x = g.op("Relu", [g.op("Add", [x, y])])
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    hidden = g.op("Relu", [g.dense(pooled, 16, 32)])
    return g.image_model(g.dense(hidden, 32, 10), 1, size, 10, "tiny_cnn")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
