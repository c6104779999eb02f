"""Shape operands that stay symbolic, rebuilt from the inputs' named dims: what fold_shapes.py cannot fold.

Where an input dim stays dynamic (a text model's batch and sequence length), the shape arithmetic exporters write
(`Shape -> Gather / Slice -> Concat -> Reshape / Expand / ConstantOfShape`, and torch's dynamo exporter writes a
lot of it) cannot be folded into constants. TVM's importer follows a Shape only through a few ops and turns the
rest into tensors of unknown shape, on which a later Reshape or Slice fails ("Reshape expects the input tensor to
have known shape", "Slice requires a statically known input rank"). ONNX's own shape inference (with data
propagation) usually knows the result all the same, in the inputs' named dims.

This pass rewrites the shape operand of each Reshape, Expand and ConstantOfShape whose output shape inference
gives in integers and named dims of the graph inputs:
- as a constant where it can be one: a Reshape's dim that equals its input's dim at the same axis is 0 (copy it),
  one unknown dim is -1; an Expand's dim that equals the broadcast input's is 1 (when that input's shape is
  static: TVM's converter wants a symbolic target for a symbolic input);
- else as `Concat(Shape(input, start=a, end=a + 1), [constants])`, which the importer keeps a symbolic shape
  (Shape's start / end need opset 15: older models keep what they have).
A Tile whose run-time repeats only copy axes of size 1 (DETR's query embeddings over a symbolic batch) becomes
that Expand first. The computations the old operands came from are dropped when nothing else reads them.

In: a shape-inferred ModelProto with named input dims. Out: the same model with those operands rewritten (shapes
re-inferred by the caller).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .fold_shapes import read_names
from .opsets import DEFAULT_DOMAINS, default_opset

SHAPE_OPERAND = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0}
MIN_SLICED_SHAPE_OPSET = 15  # Shape's start / end attributes


def _dims(value: onnx.ValueInfoProto | None) -> list[int | str | None] | None:
    """VALUE's dims as ints, dim names, or None for a dim inference left unknown; None without a shape."""
    if value is None or not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def _dim_sources(graph: onnx.GraphProto) -> dict[str, tuple[str, int]]:
    """{dim name: (graph input, axis)} for each named dim of the graph's inputs (the first input that has it)."""
    sources: dict[str, tuple[str, int]] = {}
    for value in graph.input:
        for axis, dim in enumerate(_dims(value) or []):
            if isinstance(dim, str):
                sources.setdefault(dim, (value.name, axis))
    return sources


def _as_constant(op_type: str, out: list, data: list | None, allowzero: bool) -> list[int] | None:
    """The shape operand as a constant that gives OUT from an input of dims DATA, or None when none does."""
    if op_type == "ConstantOfShape":
        return out if all(isinstance(d, int) for d in out) else None
    if op_type == "Expand":  # TVM's converter takes a constant target only for an input of static shape
        if data is None or len(data) > len(out) or not all(isinstance(d, int) for d in data):
            return None
        aligned = [None] * (len(out) - len(data)) + data
        values = [d if isinstance(d, int) else (1 if d is not None and d == a else None) for d, a in zip(out, aligned)]
        return values if None not in values else None
    values, unknown = [], 0
    for axis, dim in enumerate(out):
        if isinstance(dim, int) and not (dim == 0 and not allowzero):
            values.append(dim)
        elif not allowzero and data is not None and axis < len(data) and dim is not None and data[axis] == dim:
            values.append(0)
        else:
            unknown += 1
            values.append(-1)
    return values if unknown <= 1 else None


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.opset = default_opset(model)
        self.sources = _dim_sources(graph)
        self.dims = {v.name: _dims(v) for v in [*graph.input, *graph.value_info, *graph.output]}
        self.dims.update({t.name: list(t.dims) for t in graph.initializer})
        self.constants = {t.name for t in graph.initializer} | \
                         {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"kiln_symbolic_{base}_{self.count}"

    def _constant(self, values: list[int]) -> str:
        name = self._name("shape")
        self.initializers.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def _sliced(self, out: list, nodes: list[onnx.NodeProto]) -> str | None:
        """OUT built from Shape slices of the graph inputs and constants; None if a dim has no source."""
        if self.opset < MIN_SLICED_SHAPE_OPSET or any(not isinstance(d, int) and d not in self.sources for d in out):
            return None
        parts, ints = [], []
        for dim in out:
            if isinstance(dim, int):
                ints.append(dim)
                continue
            if ints:
                parts.append(self._constant(ints))
                ints = []
            source, axis = self.sources[dim]
            parts.append(self._name("dim"))
            nodes.append(helper.make_node("Shape", [source], [parts[-1]], start=axis, end=axis + 1))
        if ints:
            parts.append(self._constant(ints))
        if len(parts) == 1:
            return parts[0]
        nodes.append(helper.make_node("Concat", parts, [self._name("shape")], axis=0))
        return nodes[-1].output[0]

    def tile_as_expand(self, node: onnx.NodeProto) -> bool:
        """Whether NODE, a Tile with run-time repeats, only repeats axes of size 1 (an Expand to its output shape)."""
        if node.input[1] in self.constants:
            return False
        data, out = self.dims.get(node.input[0]), self.dims.get(node.output[0])
        return data is not None and out is not None and len(data) == len(out) and None not in out and \
            all(d == o or d == 1 for d, o in zip(data, out))

    def operand(self, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> str | None:
        """A new shape operand for NODE (nodes it needs appended to NODES), or None to keep the one it has."""
        index = SHAPE_OPERAND[node.op_type]
        if len(node.input) <= index or node.input[index] in self.constants:
            return None
        out = self.dims.get(node.output[0])
        if out is None:
            return None
        data = self.dims.get(node.input[0]) if node.op_type != "ConstantOfShape" else None
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        values = _as_constant(node.op_type, out, data, allowzero)
        if values is not None:
            return self._constant(values)
        return self._sliced(out, nodes) if None not in out else None


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove the nodes of GRAPH whose outputs nothing reads (graph outputs and subgraph reads count)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if set(node.output) & needed or not node.output:
            kept.append(node)
            needed |= read_names([node])
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(kept))


def rebuild_symbolic_shapes(model: onnx.ModelProto) -> int:
    """Rewrite MODEL's shape operands as the module docstring says, in place; returns how many were rewritten."""
    graph = model.graph
    rewriter = _Rewriter(model)
    if not rewriter.sources:
        return 0
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        if node.op_type == "Tile" and node.domain in DEFAULT_DOMAINS and rewriter.tile_as_expand(node):
            node.op_type = "Expand"  # its repeats only copy size-1 axes: a broadcast (TVM's Tile wants constants)
        if node.op_type in SHAPE_OPERAND and node.domain in DEFAULT_DOMAINS:
            operand = rewriter.operand(node, new_nodes)
            if operand is not None:
                node.input[SHAPE_OPERAND[node.op_type]] = operand
                rewritten += 1
        new_nodes.append(node)
    if not rewritten:
        return 0
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(rewriter.initializers)
    _drop_dead(graph)
    del graph.value_info[:]  # inferred from the old operands (some contradict the new ones): the caller re-infers
    used = read_names(graph.node) | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten
