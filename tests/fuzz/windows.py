"""Windows of the real-model corpus, the starting points of structure-aware fuzzing: a few connected nodes of a
real export cut out as a model of their own, with the values those nodes see when the whole model runs.

Cutting windows keeps what exporters write (their attributes, dtype mixes, shape arithmetic, com.microsoft ops)
while each case stays small enough to compile in well under a second; feeding the window the values of a real
run keeps indices in range and square roots of positive numbers, so an unmutated window must match ONNX Runtime.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.references import onnxruntime_session

CONSTANT_ELEMENTS = 64  # an integer or bool value this small that a window reads becomes a constant of the window


@dataclass
class Seed:
    """A corpus model at fixed input shapes and the value of every tensor in one run of ONNX Runtime."""

    name: str
    model: onnx.ModelProto
    values: dict[str, np.ndarray]
    initializers: dict[str, onnx.TensorProto]
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    constant_outputs: set[str] = field(default_factory=set)
    eligible: list[int] = field(default_factory=list)


def seed_names() -> list[str]:
    """The corpus entries windows are cut from: every committed torch export at fixed shapes (tests/corpus/)."""
    from tests.corpus.models import EXPORTS  # noqa: PLC0415 - imports benchmarks.wheels

    return [e.name for e in EXPORTS if e.shapes]


def load_seed(name: str) -> Seed:
    """The corpus entry NAME run once by ONNX Runtime with every node output kept."""
    from tests.corpus.models import BY_NAME  # noqa: PLC0415

    entry = BY_NAME[name]
    model = onnx.load(str(entry.fetch()))
    feeds = entry.inputs()
    graph = model.graph
    known = {o.name for o in graph.output}
    kept = onnx.ModelProto()
    kept.CopyFrom(model)
    for node in graph.node:
        kept.graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o and o not in known)
    session = onnxruntime_session(kept.SerializeToString(), threads=1)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feeds)))
    values.update(feeds)
    initializers = {t.name: t for t in graph.initializer}
    seed = Seed(name, model, values, initializers)
    for i, node in enumerate(graph.node):
        for o in node.output:
            seed.producer[o] = i
        for name_in in node.input:
            seed.consumers.setdefault(name_in, []).append(i)
        if node.op_type == "Constant":
            seed.constant_outputs.update(node.output)
        has_graph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        outputs_known = all(not o or o in values for o in node.output)
        if not has_graph and outputs_known and node.op_type != "Constant":
            seed.eligible.append(i)
    return seed


def _region(seed: Seed, rng: random.Random, size: int) -> list[int]:
    """SIZE connected eligible nodes (fewer where the graph runs out), grown from a random start."""
    eligible = set(seed.eligible)
    start = rng.choice(seed.eligible)
    region = {start}
    nodes = seed.model.graph.node
    while len(region) < size:
        frontier = set()
        for i in region:
            frontier.update(seed.producer[v] for v in nodes[i].input if v in seed.producer)
            for o in nodes[i].output:
                frontier.update(seed.consumers.get(o, ()))
        frontier = sorted((frontier & eligible) - region)
        if not frontier:
            break
        region.add(rng.choice(frontier))
    return sorted(region)


def _value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))


def window(seed: Seed, rng: random.Random, size: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model of SIZE connected nodes of SEED, and the feeds its inputs had in the run of the whole model.

    What the nodes read from outside becomes an initializer (the model's own, a Constant's value, or a small
    integer value such as a shape) or a graph input; what they produce for the rest of the model (or the last
    node's outputs, when nothing leaves) becomes the graph outputs."""
    nodes = seed.model.graph.node
    picked = _region(seed, rng, size)
    inside = {o for i in picked for o in nodes[i].output if o}
    graph_outputs = {o.name for o in seed.model.graph.output}
    inputs, initializers, feeds = [], [], {}
    for i in picked:
        for name in nodes[i].input:
            if not name or name in inside or name in feeds or any(t.name == name for t in initializers):
                continue
            value = seed.values.get(name)
            if name in seed.initializers:
                initializers.append(seed.initializers[name])
            elif value is None:
                raise KeyError(name)  # not expected: every node output was kept
            elif name in seed.constant_outputs or (value.dtype.kind in "iub" and value.size <= CONSTANT_ELEMENTS):
                initializers.append(numpy_helper.from_array(value, name))
            else:
                inputs.append(_value_info(name, value))
                feeds[name] = value
    leaving = [o for i in picked for o in nodes[i].output
               if o and (o in graph_outputs or any(c not in picked for c in seed.consumers.get(o, ())))]
    leaving = leaving or [o for o in nodes[picked[-1]].output if o]
    graph = helper.make_graph([nodes[i] for i in picked], f"{seed.name}-window", inputs,
                              [_value_info(o, seed.values[o]) for o in leaving], initializers)
    model = helper.make_model(graph, opset_imports=list(seed.model.opset_import))
    model.ir_version = seed.model.ir_version
    model.functions.extend(seed.model.functions)
    return model, feeds
