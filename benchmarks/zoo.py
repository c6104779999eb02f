"""Reproducible model builders (onnx.helper, fixed seeds): ResNet, MobileNetV2 and a BERT-style encoder.

Run `python -m benchmarks.zoo NAME -o FILE.onnx`; weights are random but fixed by the seed, so every machine
builds byte-identical models without downloading anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Accumulates nodes and initializers with unique names; each method returns its output's name."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def weight(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> str:
        fan_in = cin // groups * k * k
        w = (self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inputs = [x, self.weight(w)]
        if bias:
            inputs.append(self.weight((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b"))
        return self.op("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        stats = [r.uniform(0.5, 1.5, c), r.standard_normal(c) * 0.1, r.standard_normal(c) * 0.1, r.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x, *(self.weight(s.astype(np.float32), "bn") for s in stats)],
                       epsilon=1e-5)

    def dense(self, x: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.02).astype(np.float32)
        return self.op("Add", [self.op("MatMul", [x, self.weight(w)]), self.weight(b, "b")])

    def classifier(self, x: str, channels: int, classes: int) -> str:
        """Global average pool, flatten, fully connected layer to CLASSES logits."""
        x = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        w = (self.rng.standard_normal((classes, channels)) / np.sqrt(channels)).astype(np.float32)
        return self.op("Gemm", [x, self.weight(w), self.weight(np.zeros(classes, np.float32), "b")], transB=1)

    def image_model(self, logits: str, batch: int | str, size: int, classes: int, name: str) -> onnx.ModelProto:
        """The model with one NCHW image input called 'input' and LOGITS as its output."""
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])
        return self.model([inp], {logits: [batch, classes]}, name)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: dict[str, list], name: str) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in outputs.items()]
        graph = helper.make_graph(self.nodes, name, inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln.zoo")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def resnet(depths=(2, 2, 2, 2), width: int = 64, size: int = 224, classes: int = 1000, seed: int = 0,
           batch: int | str = "N", bottleneck: bool = False) -> onnx.ModelProto:
    """A ResNet: conv+BN+ReLU stem, max-pool, residual stages, GAP, FC. Basic blocks (ResNet-18/34) by default;
    bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4: ResNet-50) with BOTTLENECK."""
    g = GraphBuilder(seed)
    x = g.op("Relu", [g.bn(g.conv("input", 3, width, 7, stride=2), width)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, blocks in enumerate(depths):
        mid = width * 2**stage
        cout = mid * 4 if bottleneck else mid
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            if bottleneck:
                y = g.op("Relu", [g.bn(g.conv(x, cin, mid, 1), mid)])
                y = g.op("Relu", [g.bn(g.conv(y, mid, mid, 3, stride), mid)])
                y = g.bn(g.conv(y, mid, cout, 1), cout)
            else:
                y = g.op("Relu", [g.bn(g.conv(x, cin, cout, 3, stride), cout)])
                y = g.bn(g.conv(y, cout, cout, 3), cout)
            shortcut = g.bn(g.conv(x, cin, cout, 1, stride), cout) if stride != 1 or cin != cout else x
            x, cin = g.op("Relu", [g.op("Add", [y, shortcut])]), cout
    return g.image_model(g.classifier(x, cin, classes), batch, size, classes, "resnet")


def squeezenet(size: int = 224, classes: int = 1000, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """SqueezeNet 1.1: Fire modules (1x1 squeeze, then 1x1 and 3x3 expands concatenated), max-pools, conv head."""
    g = GraphBuilder(seed)

    def conv_relu(x, cin, cout, k, stride=1):
        return g.op("Relu", [g.conv(x, cin, cout, k, stride, bias=True)])

    def fire(x, cin, squeeze, expand):
        s = conv_relu(x, cin, squeeze, 1)
        return g.op("Concat", [conv_relu(s, squeeze, expand, 1), conv_relu(s, squeeze, expand, 3)], axis=1)

    def pool(x):
        return g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])

    x = pool(conv_relu("input", 3, 64, 3, stride=2))
    x = pool(fire(fire(x, 64, 16, 64), 128, 16, 64))
    x = pool(fire(fire(x, 128, 32, 128), 256, 32, 128))
    x = fire(fire(fire(fire(x, 256, 48, 192), 384, 48, 192), 384, 64, 256), 512, 64, 256)
    x = g.op("Flatten", [g.op("GlobalAveragePool", [conv_relu(x, 512, classes, 1)])], axis=1)
    return g.image_model(x, batch, size, classes, "squeezenet")


def shufflenet(groups: int = 3, size: int = 224, classes: int = 1000, seed: int = 0,
               batch: int | str = "N") -> onnx.ModelProto:
    """ShuffleNet v1: grouped 1x1 convs, channel shuffle (reshape-transpose-reshape), depthwise 3x3, and
    average-pool shortcuts concatenated on the stride-2 units."""
    g = GraphBuilder(seed)
    widths = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}[groups]

    def shuffle(x, c, hw):
        five = g.weight(np.array([0, groups, c // groups, hw, hw], np.int64), "shape")
        four = g.weight(np.array([0, c, hw, hw], np.int64), "shape")
        return g.op("Reshape", [g.op("Transpose", [g.op("Reshape", [x, five])], perm=[0, 2, 1, 3, 4]), four])

    x = g.op("Relu", [g.bn(g.conv("input", 3, 24, 3, stride=2), 24)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin, hw = 24, size // 4
    for stage, repeats in enumerate((4, 8, 4)):
        cout = widths * 2**stage
        for unit in range(repeats):
            stride = 2 if unit == 0 else 1
            first_groups = 1 if stage == 0 and unit == 0 else groups
            branch_out = cout - cin if stride == 2 else cout
            mid = cout // 4
            y = g.op("Relu", [g.bn(g.conv(x, cin, mid, 1, groups=first_groups), mid)])
            y = shuffle(y, mid, hw)
            hw = hw // stride
            y = g.bn(g.conv(y, mid, mid, 3, stride, groups=mid), mid)
            y = g.bn(g.conv(y, mid, branch_out, 1, groups=groups), branch_out)
            if stride == 2:
                pooled = g.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
                x = g.op("Relu", [g.op("Concat", [pooled, y], axis=1)])
            else:
                x = g.op("Relu", [g.op("Add", [x, y])])
            cin = cout
    return g.image_model(g.classifier(x, cin, classes), batch, size, classes, "shufflenet")


def mobilenet_v2(width_mult: float = 1.0, size: int = 224, classes: int = 1000, seed: int = 0,
                 batch: int | str = "N") -> onnx.ModelProto:
    """MobileNetV2: inverted residual blocks with depthwise 3x3 convs and ReLU6 (Clip)."""
    g = GraphBuilder(seed)
    six = [g.weight(np.array(0.0, np.float32), "lo"), g.weight(np.array(6.0, np.float32), "hi")]

    def conv_bn(x, cin, cout, k, stride=1, groups=1, act=True):
        y = g.bn(g.conv(x, cin, cout, k, stride, groups), cout)
        return g.op("Clip", [y, *six]) if act else y

    def ch(c):
        return max(8, int(c * width_mult + 4) // 8 * 8)

    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    cin = ch(32)
    x = conv_bn("input", 3, cin, 3, stride=2)
    for expand, c, repeats, first_stride in settings:
        cout = ch(c)
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            hidden = cin * expand
            y = conv_bn(x, cin, hidden, 1) if expand != 1 else x
            y = conv_bn(y, hidden, hidden, 3, stride, groups=hidden)
            y = conv_bn(y, hidden, cout, 1, act=False)
            x, cin = (g.op("Add", [x, y]) if stride == 1 and cin == cout else y), cout
    last = ch(1280) if width_mult > 1 else 1280
    x = conv_bn(x, cin, last, 1)
    return g.image_model(g.classifier(x, last, classes), batch, size, classes, "mobilenet_v2")


def bert_encoder(layers: int = 2, hidden: int = 256, heads: int = 4, ffn: int = 1024, seq: int | str = 128,
                 seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """A BERT-style encoder on embeddings: multi-head self-attention, LayerNormalization and GELU (Erf form)."""
    g = GraphBuilder(seed)
    head = hidden // heads
    split = g.weight(np.array([0, 0, heads, head], np.int64), "shape")
    merge = g.weight(np.array([0, 0, hidden], np.int64), "shape")
    scale = g.weight(np.array(1.0 / np.sqrt(head), np.float32), "scale")

    def layer_norm(x):
        gamma = g.weight(g.rng.uniform(0.8, 1.2, hidden).astype(np.float32), "ln")
        beta = g.weight((g.rng.standard_normal(hidden) * 0.05).astype(np.float32), "ln")
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    def gelu(x):
        c = [g.weight(np.array(v, np.float32), "c") for v in (1 / np.sqrt(2), 1.0, 0.5)]
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [g.op("Erf", [g.op("Mul", [x, c[0]])]), c[1]])]), c[2]])

    def heads_first(x):
        return g.op("Transpose", [g.op("Reshape", [x, split])], perm=[0, 2, 1, 3])

    x = "embeddings"
    for _ in range(layers):
        q, k, v = (heads_first(g.dense(x, hidden, hidden)) for _ in range(3))
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        x = layer_norm(g.op("Add", [x, g.dense(context, hidden, hidden)]))
        x = layer_norm(g.op("Add", [x, g.dense(gelu(g.dense(x, hidden, ffn)), ffn, hidden)]))
    inp = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [batch, seq, hidden])
    return g.model([inp], {x: [batch, seq, hidden]}, "bert_encoder")


ZOO = {
    "resnet18": lambda: resnet((2, 2, 2, 2)),
    "resnet34": lambda: resnet((3, 4, 6, 3)),
    "resnet50": lambda: resnet((3, 4, 6, 3), bottleneck=True),
    "squeezenet": lambda: squeezenet(),
    "mobilenetv2": lambda: mobilenet_v2(),
    "shufflenet": lambda: shufflenet(),
    "bert-mini": lambda: bert_encoder(layers=4, hidden=256, heads=4, ffn=1024, seq=128),
    "minilm": lambda: bert_encoder(layers=6, hidden=384, heads=12, ffn=1536, seq=128),  # all-MiniLM-L6-v2's shape
    "bert-base": lambda: bert_encoder(layers=12, hidden=768, heads=12, ffn=3072, seq=128),
}


def batch_one_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every input's shape with symbolic dims (the batch) set to 1: how the benchmarks compile and tune."""
    return {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(ZOO))
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args()
    from runtime.atomic import atomic_write  # noqa: PLC0415 - keep the builders importable alone

    atomic_write(args.output, ZOO[args.name]().SerializeToString())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
