"""Loop and Scan unrolled into plain ONNX ops where their trip count is known at compile time.

TVM's importer has no Scan converter, and its Loop becomes a run-time recursion Kiln's kernels cannot fuse. Where
the number of iterations is fixed (a Scan over an axis of static length; a Loop whose trip count is a constant
after shape folding and whose condition stays true), the body is written out once per iteration: body inputs
become the current state (and, for Scan, the slice of each scan input), body outputs the next state; scan outputs
are stacked along their axis. The result keeps the node's outputs, so the rest of the graph is untouched. A node
this cannot unroll (a data-dependent trip count or condition, nested subgraphs) stays as it is.

In: a shape-inferred ModelProto whose shape computations are folded. Out: the same model with every such
top-level Loop / Scan replaced; returns how many were.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .node_builder import NodeBuilder
from .opsets import DEFAULT_DOMAINS, default_opset

MAX_ITERATIONS = 256  # more would write out too many nodes


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _has_subgraph(graph: onnx.GraphProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute)


class _Unroller(NodeBuilder):
    """Writes out one body per iteration with fresh names."""

    def __init__(self, prefix: str, opset: int):
        super().__init__(prefix=prefix)
        self.prefix, self.opset, self.counter = prefix, opset, itertools.count()

    def body(self, graph: onnx.GraphProto, bound: dict[str, str]) -> list[str]:
        """Append GRAPH's nodes with its inputs read from BOUND ({body input: outer name}); returns the outer
        names of its outputs."""
        names = dict(bound)
        step = next(self.counter)
        for init in graph.initializer:
            names[init.name] = self.const(numpy_helper.to_array(init))
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{self.prefix}_{step}_{node.name}" if node.name else ""
            for i, name in enumerate(node.input):
                copy.input[i] = names.get(name, name)  # names from the outer scope stay
            for i, name in enumerate(node.output):
                if name:
                    names[name] = copy.output[i] = f"{self.prefix}_{step}_{name}"
            self.nodes.append(copy)
        return [names.get(out.name, out.name) for out in graph.output]

    def stack(self, pieces: list[str], axis: int, out: str) -> None:
        """OUT = PIECES stacked along a new AXIS."""
        if self.opset >= 13:
            axes = self.const(np.array([axis], np.int64))
            unsqueezed = [self.op("Unsqueeze", [p, axes]) for p in pieces]
        else:
            unsqueezed = [self.op("Unsqueeze", [p], axes=[axis]) for p in pieces]
        self.op("Concat", unsqueezed, out, axis=axis) if len(unsqueezed) > 1 else self.op("Identity", unsqueezed, out)


def _scan(node: onnx.NodeProto, shapes: dict, fresh, opset: int) -> list[onnx.NodeProto] | None:
    attrs = _attrs(node)
    body: onnx.GraphProto = attrs["body"]
    scans = attrs["num_scan_inputs"]
    states = len(node.input) - scans
    scan_in = list(node.input[states:])
    in_axes = list(attrs.get("scan_input_axes", [0] * scans))
    in_dirs = list(attrs.get("scan_input_directions", [0] * scans))
    outs = len(body.output) - states
    out_axes = list(attrs.get("scan_output_axes", [0] * outs))
    out_dirs = list(attrs.get("scan_output_directions", [0] * outs))
    lengths = set()
    for name, axis in zip(scan_in, in_axes):
        shape = shapes.get(name)
        if shape is None:
            return None
        lengths.add(shape[axis % len(shape)])
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int) or not 0 < next(iter(lengths)) <= MAX_ITERATIONS:
        return None
    steps = next(iter(lengths))
    u = _Unroller(fresh("scan"), opset)
    ranks = [len(shapes[name]) for name in scan_in]
    state = list(node.input[:states])
    collected: list[list[str]] = [[] for _ in range(outs)]
    for t in range(steps):
        bound = dict(zip((i.name for i in body.input[:states]), state))
        for k, (name, axis, direction) in enumerate(zip(scan_in, in_axes, in_dirs)):
            index = steps - 1 - t if direction else t
            bound[body.input[states + k].name] = u.op("Gather", [name, u.const(np.array(index, np.int64))],
                                                      axis=axis % ranks[k])
        results = u.body(body, bound)
        state = results[:states]
        for k in range(outs):
            collected[k].append(results[states + k])
    for out, value in zip(node.output[:states], state):
        if out:
            u.op("Identity", [value], out)
    for k, out in enumerate(node.output[states:]):
        if out:
            pieces = collected[k][::-1] if out_dirs[k] else collected[k]
            rank = len(shapes[out]) if out in shapes else None
            if rank is None and out_axes[k] < 0:
                return None
            u.stack(pieces, out_axes[k] % rank if rank else out_axes[k], out)
    return u.nodes


def _always_true(body: onnx.GraphProto) -> bool:
    """Whether BODY's condition output is its condition input passed on (or a constant true)."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    producer = {o: n for n in body.node for o in n.output}
    name = cond_out
    while name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    if name == cond_in:
        return True
    node = producer.get(name)
    return node is not None and node.op_type == "Constant" and \
        bool(np.all(numpy_helper.to_array(_attrs(node)["value"])))


def _loop(node: onnx.NodeProto, constants: dict, fresh, opset: int) -> list[onnx.NodeProto] | None:
    body: onnx.GraphProto = _attrs(node)["body"]
    trip = constants.get(node.input[0]) if node.input[0] else None
    cond = constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else np.array(True)
    if trip is None or cond is None or not bool(np.all(cond)) or not _always_true(body):
        return None
    steps = int(np.asarray(trip).reshape(-1)[0])
    if not 0 < steps <= MAX_ITERATIONS:
        return None
    carried = len(node.input) - 2
    u = _Unroller(fresh("loop"), opset)
    state = list(node.input[2:])
    collected: list[list[str]] = [[] for _ in range(len(body.output) - 1 - carried)]
    cond_name = u.const(np.array(True))
    for i in range(steps):
        bound = {body.input[0].name: u.const(np.array(i, np.int64)), body.input[1].name: cond_name}
        bound.update(zip((v.name for v in body.input[2:]), state))
        results = u.body(body, bound)
        state = results[1:1 + carried]
        for k, value in enumerate(results[1 + carried:]):
            collected[k].append(value)
    for out, value in zip(node.output[:carried], state):
        if out:
            u.op("Identity", [value], out)
    for k, out in enumerate(node.output[carried:]):
        if out:
            u.stack(collected[k], 0, out)
    return u.nodes


def unroll_control_flow(model: onnx.ModelProto) -> int:
    """Unroll MODEL's top-level Loop and Scan nodes where they can be (see the module docstring), in place;
    returns how many were."""
    graph = model.graph
    if not any(n.op_type in ("Loop", "Scan") for n in graph.node):
        return 0
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                                  for d in value.type.tensor_type.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(_attrs(n)["value"]) for n in graph.node
                      if n.op_type == "Constant" and "value" in _attrs(n)})
    counter = itertools.count()
    opset = default_opset(model)

    def fresh(base: str) -> str:
        return f"kiln_{base}{next(counter)}"

    rewritten, done = [], 0
    for node in graph.node:
        body = _attrs(node).get("body") if node.op_type in ("Loop", "Scan") else None
        nodes = None
        if body is not None and not _has_subgraph(body) and node.domain in DEFAULT_DOMAINS:
            nodes = _scan(node, shapes, fresh, opset) if node.op_type == "Scan" else \
                _loop(node, constants, fresh, opset)
        if nodes is None:
            rewritten.append(node)
        else:
            rewritten.extend(nodes)
            done += 1
    if done:
        del graph.node[:]
        graph.node.extend(rewritten)
    return done
