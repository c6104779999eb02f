"""Graph inputs whose values decide a shape, an axis or a size: what `--input-value` is for.

Kiln compiles fixed shapes ahead of time. An input that feeds a Reshape's shape, a Reduce's axes, a Resize's sizes,
TopK's k and the like decides the shapes of the tensors after it, so TVM's importer needs its value at compile time
("Only constant axes currently supported"). ONNX Runtime reads such values at run time. This module finds those
inputs, so the error can name them and the fix (`--input-value NAME=V,...`), and so tools that know the values
(the conformance runner) can fix them.
"""

from __future__ import annotations

import onnx

# Operand positions that TVM's importer needs as constants, by op type (shapes, axes, sizes, and a few values it
# folds into the kernel: OneHot's on / off values, Pad's constant).
SHAPE_OPERANDS = {
    **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Reshape", "Expand", "Tile",
                           "TopK", "CumSum", "CumProd", "Squeeze", "Unsqueeze", "Split", "Upsample", "Trilu",
                           "AffineGrid", "CenterCropPad", "DFT")},
    "Resize": (1, 2, 3), "Pad": (1, 2, 3), "OneHot": (1, 2), "MaxUnpool": (2,), "Slice": (1, 2, 3, 4),
    "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "HannWindow": (0,), "HammingWindow": (0,), "BlackmanWindow": (0,), "MelWeightMatrix": (0, 1, 2, 3, 4),
    "Col2Im": (1, 2), "STFT": (1, 3), "NonMaxSuppression": (2, 3, 4), "Loop": (0, 1),
}
# Operands TVM's converter does not refuse when they are computed at run time but replaces with a default value
# (NonMaxSuppression's max_output_boxes_per_class becomes 0: no boxes at all). Kiln refuses those instead.
DEFAULTED_OPERANDS = {"NonMaxSuppression": {2: "max_output_boxes_per_class", 3: "iou_threshold",
                                            4: "score_threshold"}}
# Ops whose output depends on the shape of their input, not on its values.
_SHAPE_ONLY = {"Shape", "Size"}


def runtime_shape_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """{graph input: 'Op operand N' it reaches} for each input whose value flows into a SHAPE_OPERANDS slot of
    MODEL's top-level graph (through any chain of ops but Shape / Size)."""
    graph = model.graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[str, str] = {}
    for node in graph.node:
        for index in SHAPE_OPERANDS.get(node.op_type, ()):
            if index >= len(node.input) or not node.input[index]:
                continue
            for name in _sources(node.input[index], producer, inputs):
                found.setdefault(name, f"{node.op_type} operand {index}")
    return found


def _sources(name: str, producer: dict, inputs: set[str]) -> set[str]:
    """The graph inputs whose values NAME is computed from."""
    seen, stack, found = set(), [name], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in inputs:
            found.add(current)
        node = producer.get(current)
        if node is not None and node.op_type not in _SHAPE_ONLY:
            stack.extend(n for n in node.input if n)
    return found


def bind_hint(model: onnx.ModelProto) -> str | None:
    """The fix to suggest when MODEL's inputs decide shapes (see the module docstring), or None."""
    found = runtime_shape_inputs(model)
    if not found:
        return None
    listed = ", ".join(f"{name} ({where})" for name, where in sorted(found.items()))
    example = " ".join(f"--input-value {name}=..." for name in sorted(found))
    return (f"input(s) {listed} decide shapes or axes at run time, which Kiln fixes at compile time: give their "
            f"values with {example}")


def defaulted_operands(model: onnx.ModelProto) -> list[str]:
    """'Op operand' for each DEFAULTED_OPERANDS slot of MODEL's top-level graph that is not a constant."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | \
        {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [f"{node.op_type} {name} ({node.input[index]})" for node in graph.node
            for index, name in DEFAULTED_OPERANDS.get(node.op_type, {}).items()
            if index < len(node.input) and node.input[index] and node.input[index] not in constants]
