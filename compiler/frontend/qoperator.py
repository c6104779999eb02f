"""Models in ONNX Runtime's operator format (QLinearConv, QLinearMatMul, and its com.microsoft QLinearAdd, ...)
rewritten, before import, into the QDQ format: DequantizeLinear -> the float op -> QuantizeLinear. TVM 0.27's
importer has none of the QLinear ops; in QDQ form Kiln's int8 lowering takes the model's scales and zero points
(fake_quant.py, quantization.py), exactly as for a model quantized in QDQ format.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"

# QLinear op -> (float op, number of quantized inputs (each x, scale, zero point), extra float inputs allowed)
_ELEMENTWISE = {
    "QLinearAdd": ("Add", 2), "QLinearMul": ("Mul", 2), "QLinearSigmoid": ("Sigmoid", 1),
    "QLinearLeakyRelu": ("LeakyRelu", 1), "QLinearGlobalAveragePool": ("GlobalAveragePool", 1),
    "QLinearAveragePool": ("AveragePool", 1),
}
_DROPPED_ATTRS = {"channels_last"}  # QLinear pooling attributes the float op does not have


class _Rewriter:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {i.name: i for i in graph.initializer}
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}__kiln_qdq{self.count}"

    def dequantize(self, x: str, scale: str, zero: str, axis: int | None = None) -> tuple[str, onnx.NodeProto]:
        out = self.name(x)
        attrs = {"axis": axis} if axis is not None else {}
        inputs = [x, scale] + ([zero] if zero else [])
        return out, helper.make_node("DequantizeLinear", inputs, [out], name=out, **attrs)

    def quantize(self, x: str, scale: str, zero: str, out: str) -> onnx.NodeProto:
        return helper.make_node("QuantizeLinear", [x, scale] + ([zero] if zero else []), [out], name=self.name(out))

    def const(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return numpy_helper.to_array(init) if init is not None else None

    def float_bias(self, bias: str, x_scale: str, w_scale: str) -> str:
        """The int32 bias of a QLinearConv (scale x_scale * w_scale, zero point 0) as a float initializer."""
        values, xs, ws = self.const(bias), self.const(x_scale), self.const(w_scale)
        if values is None or xs is None or ws is None:
            raise ValueError("QLinearConv with a non-constant bias or scale")
        name = self.name(bias)
        self.graph.initializer.append(numpy_helper.from_array(
            (values.astype(np.float64) * xs.astype(np.float64) * ws.astype(np.float64)).astype(np.float32), name))
        return name

    def rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        op, ins = node.op_type, list(node.input)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in _DROPPED_ATTRS}
        if op == "QLinearConv":
            x, xw_nodes = self.dequantize(ins[0], ins[1], ins[2])
            w, w_node = self.dequantize(ins[3], ins[4], ins[5], axis=0)
            inputs = [x, w] + ([self.float_bias(ins[8], ins[1], ins[4])] if len(ins) > 8 and ins[8] else [])
            out = self.name(node.output[0])
            conv = helper.make_node("Conv", inputs, [out], name=out, **attrs)
            return [xw_nodes, w_node, conv, self.quantize(out, ins[6], ins[7], node.output[0])]
        if op == "QLinearMatMul":
            a, a_node = self.dequantize(ins[0], ins[1], ins[2])
            b_scale = self.const(ins[4])
            b, b_node = self.dequantize(ins[3], ins[4], ins[5], axis=-1 if b_scale is not None and b_scale.size > 1
                                        else None)
            out = self.name(node.output[0])
            return [a_node, b_node, helper.make_node("MatMul", [a, b], [out], name=out),
                    self.quantize(out, ins[6], ins[7], node.output[0])]
        if op in _ELEMENTWISE and node.domain == MS_DOMAIN:
            float_op, quantized = _ELEMENTWISE[op]
            nodes, floats = [], []
            for i in range(quantized):
                value, dq = self.dequantize(ins[3 * i], ins[3 * i + 1], ins[3 * i + 2] if len(ins) > 3 * i + 2 else "")
                nodes.append(dq)
                floats.append(value)
            y_scale, y_zero = ins[3 * quantized], ins[3 * quantized + 1] if len(ins) > 3 * quantized + 1 else ""
            out = self.name(node.output[0])
            nodes.append(helper.make_node(float_op, floats, [out], name=out, **attrs))
            nodes.append(self.quantize(out, y_scale, y_zero, node.output[0]))
            return nodes
        return None


def to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """MODEL with its QLinear ops (top-level graph) in QDQ form; a model without them comes back unchanged."""
    graph = model.graph
    if not any(n.op_type.startswith("QLinear") for n in graph.node):
        return model
    rewriter = _Rewriter(graph)
    nodes = []
    for node in graph.node:
        replaced = rewriter.rewrite(node)
        nodes.extend(replaced if replaced is not None else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(n.domain == MS_DOMAIN for n in graph.node):
        kept = [o for o in model.opset_import if o.domain != MS_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model
