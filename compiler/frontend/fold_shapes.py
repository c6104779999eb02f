"""Shape computations folded before import: the `Shape -> Gather -> Concat -> Reshape` chains exporters write.

Exporters compute shapes at run time (torch's TorchScript exporter and paddle2onnx both do). Where the input
shapes are fixed, those subgraphs are constants, but TVM's importer needs a Reshape's or Expand's shape as a
constant to import it at all ("Reshape requires the input new shape to be Shape"). This pass evaluates them
with onnx's reference implementation and puts the results in as initializers.

In: a shape-inferred ModelProto. Out: the same model with every top-level node whose inputs are all known
replaced by an initializer (Shape and Size of tensors whose shape is static count as known, and so do the static
dims a Gather or Slice picks out of a partly known Shape: Swin's window paddings over a dynamic batch), where the node
computes shapes or other integer / boolean values or float scalars, or fills a tensor from a shape
(ConstantOfShape, Range, ...). Float arithmetic on weights is left to TVM's FoldConstant, and QuantizeLinear /
DequantizeLinear pairs stay (Kiln reads a QDQ model's scales from them). Nodes with subgraphs and random ones are
never folded; a node that computes a graph output stays, but the nodes that read its value fold with it (a
window of a ViT export returned a Slice of its shape that a Reshape also read).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .opsets import DEFAULT_DOMAINS

log = logging.getLogger(__name__)

# Ops whose output is derived from a shape, folded whatever its element type (masks, position ids).
FILL_OPS = {"ConstantOfShape", "Range", "EyeLike", "Expand", "Tile", "Where", "Equal", "Not", "Cast", "Trilu"}
NEVER = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomNormalLike",
         "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan", "SequenceMap"}
MAX_FOLDED_ELEMENTS = 1 << 22  # a folded tensor larger than this (16 MB of float32) stays a computation
MAX_SMALL_FLOAT = 16  # float results this small are scalars of shape arithmetic (a Loop's trip count), not weights
UNKNOWN_DIM = -(1 << 62)  # stands for a dynamic dim in a partly known shape; a result that has it is not known
SELECTIONS = {"Gather", "Slice"}  # ops that pick dims out of a shape: a picked static dim is known
MAX_ROUNDS = 8  # fold, re-infer shapes, fold what became known; real models settle in 2-4 rounds


def _static_shape(value: onnx.ValueInfoProto) -> list[int] | None:
    dims = _partial_shape(value)
    return None if dims is None or UNKNOWN_DIM in dims else dims


def _partial_shape(value: onnx.ValueInfoProto) -> list[int] | None:
    """VALUE's dims, UNKNOWN_DIM for each dynamic one; None when not even its rank is known."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else UNKNOWN_DIM
            for d in value.type.tensor_type.shape.dim]


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: list) -> list[np.ndarray] | None:
    """NODE's outputs computed by onnx.reference on INPUTS (None for an omitted optional input)."""
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415 - loads every reference op: only when needed

    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    one = helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))], domain=node.domain,
                           **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    graph = helper.make_graph([one], "fold", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype),
                                                                            x.shape)
                                              for n, x in zip(names, inputs) if x is not None],
                              [helper.make_value_info(f"out{i}", onnx.TypeProto()) for i in range(len(node.output))])
    model = helper.make_model(graph, opset_imports=opset)
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {n: x for n, x in zip(names, inputs)
                                                                             if x is not None})]
    except Exception as err:  # noqa: BLE001 - an op the reference lacks, or bad attributes: leave it to TVM
        log.debug("not folding %s (%s): %s", node.name, node.op_type, err)
        return None


def _shape_of(node: onnx.NodeProto, shape: list[int]) -> np.ndarray:
    """What Shape (with its start / end attributes) or Size gives for a tensor of the static SHAPE."""
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64)


def _foldable(node: onnx.NodeProto, outputs: list[np.ndarray]) -> bool:
    """Whether to put OUTPUTS in for NODE: shape-like values, or a tensor filled from a shape; never huge ones."""
    if any(o.size > MAX_FOLDED_ELEMENTS for o in outputs):
        return False
    return node.op_type in FILL_OPS or all(o.dtype.kind in "iub" or o.size <= MAX_SMALL_FLOAT for o in outputs)


def _fold_round(model: onnx.ModelProto) -> int:
    """Fold what is known in MODEL's top-level graph, in place; returns how many nodes were folded."""
    graph = model.graph
    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes = {v.name: _partial_shape(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    partial: dict[str, np.ndarray] = {}  # Shape outputs of tensors with dynamic dims: UNKNOWN_DIM stands for those
    outputs = {o.name for o in graph.output}
    kept, folded = [], {}
    for node in graph.node:
        if node.op_type in NEVER or node.domain not in DEFAULT_DOMAINS \
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            kept.append(node)
            continue
        values = None
        if node.op_type == "Constant":
            values = _evaluate(node, [], list(model.opset_import))
        elif node.op_type in ("Shape", "Size") and shapes.get(node.input[0]) is not None:
            shape = shapes[node.input[0]]
            if node.op_type == "Size":
                values = None if UNKNOWN_DIM in shape else [_shape_of(node, shape)]
            else:  # a Shape's start / end may pick static dims only
                values = [_shape_of(node, shape)]
                if UNKNOWN_DIM in values[0]:
                    partial[node.output[0]], values = values[0], None
        elif node.op_type in SELECTIONS and node.input[0] in partial and \
                all(not name or name in known for name in node.input[1:]):
            values = _evaluate(node, [partial[node.input[0]], *[known[n] if n else None for n in node.input[1:]]],
                               list(model.opset_import))  # the static dims picked out of a partly known shape
            values = None if values is None or any(UNKNOWN_DIM in v for v in values) else values
        elif node.input and all(not name or name in known for name in node.input):
            values = _evaluate(node, [known[name] if name else None for name in node.input], list(model.opset_import))
        if values is None or len(values) != len(node.output) or \
                (node.op_type not in ("Shape", "Size", "Constant") and not _foldable(node, values)):
            kept.append(node)
            continue
        if set(node.output) & outputs:  # a graph output stays a node's; the nodes that read it see its value
            kept.append(node)
            known.update((name, value) for name, value in zip(node.output, values) if name)
            continue
        for name, value in zip(node.output, values):
            if name:
                known[name] = value
                folded[name] = value
    if not folded:
        return 0
    used = read_names(kept) | outputs
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in folded.items() if name in used)
    kept_info = [v for v in graph.value_info if v.name not in folded]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(folded)


def read_names(nodes) -> set[str]:
    """Every tensor name NODES read, their subgraphs' reads of the outer scope included."""
    names = set()
    for node in nodes:
        names.update(node.input)
        for attr in node.attribute:
            for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= read_names(graph.node)
    return names


def fold_shape_computations(model: onnx.ModelProto) -> onnx.ModelProto:
    """MODEL with its constant shape computations folded (see the module docstring), shapes re-inferred after
    each round."""
    for _ in range(MAX_ROUNDS):
        if not _fold_round(model):
            break
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    return model
