"""ONNX ops rewritten into other ONNX ops before import, where TVM's importer has no converter, one whose code
Kiln cannot build, or one that gets an output wrong. Each rewrite keeps the node's outputs, so the rest of the
graph is untouched.

- Cosh(x) = Mean(e, 1/e) and Sinh(x) = Mean(e, -1/e) with e = Exp(x): TVM lowers cosh / sinh to intrinsics its
  LLVM codegen does not know once they are vectorized ("unknown intrinsic tirx.cosh"). Mean needs no constant of
  x's dtype, so the rewrite works at every opset.
- LayerNormalization's optional Mean and InvStdDev outputs: TVM's importer returns placeholders for them. When a
  model uses them they are computed with ReduceMean / Sqrt / Reciprocal beside the node, which keeps Y. A Scale
  or B that broadcasts to the normalized axes without having their shape (TVM's converter refuses it) is applied
  by Mul and Add after a LayerNormalization with a Scale of ones.
- LpNormalization (no converter in TVM's importer): x divided by its L1 or L2 norm over the axis.
- com.microsoft SkipLayerNormalization (ONNX Runtime's transformer optimizer): Add + LayerNormalization, its
  optional outputs included (TVM's converter takes neither a missing beta / bias nor the optional outputs).
- CumProd (no converter in TVM's importer): running products of the slices along a static axis.
- LSTM, GRU, RNN (no converter in TVM's importer): unrolled over their time steps where the sequence length is
  static (recurrent.py).
- Resize with `axes`, a keep_aspect_ratio_policy or half_pixel_symmetric coordinates, ConvTranspose with
  `output_shape`: as the forms TVM's converters take, where that is exact (spatial_rewrites.py).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.errors import KilnError

from . import recurrent, spatial_rewrites
from .opsets import DEFAULT_DOMAINS, default_opset


def _hyperbolic(node: onnx.NodeProto, fresh, _context) -> list[onnx.NodeProto]:
    e, inverse = fresh("exp"), fresh("inv")
    nodes = [helper.make_node("Exp", [node.input[0]], [e], name=e),
             helper.make_node("Reciprocal", [e], [inverse], name=inverse)]
    if node.op_type == "Sinh":
        negated = fresh("neg")
        nodes.append(helper.make_node("Neg", [inverse], [negated], name=negated))
        inverse = negated
    nodes.append(helper.make_node("Mean", [e, inverse], [node.output[0]], name=node.name or fresh("mean")))
    return nodes


def _layer_norm_statistics(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """NODE with only its Y output, and its Mean / InvStdDev outputs computed by plain ops (over the axes from
    `axis` to the last, in the stash type: float32 unless stash_type says otherwise)."""
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if not any(outputs[1:]):
        return [node]
    rank = context.rank(node.input[0])
    if rank is None:
        return [node]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = attrs.get("axis", -1) % rank
    epsilon = attrs.get("epsilon", 1e-5)
    axes = list(range(axis, rank))
    kept = onnx.NodeProto()
    kept.CopyFrom(node)
    del kept.output[1:]
    x = node.input[0]
    stash = onnx.TensorProto.FLOAT if attrs.get("stash_type", 1) == 1 else context.elem_type(x)
    nodes = [kept]
    if context.elem_type(x) != stash:
        cast = fresh("ln_x")
        nodes.append(helper.make_node("Cast", [x], [cast], to=stash))
        x = cast

    def reduce_mean(data: str, out: str) -> onnx.NodeProto:
        if context.opset >= 18:
            axes_name = fresh("ln_axes")
            nodes.append(helper.make_node("Constant", [], [axes_name], value=helper.make_tensor(
                axes_name, onnx.TensorProto.INT64, [len(axes)], axes)))
            return helper.make_node("ReduceMean", [data, axes_name], [out], keepdims=1)
        return helper.make_node("ReduceMean", [data], [out], axes=axes, keepdims=1)

    mean, centered, squared, variance, eps, shifted, std = (fresh(n) for n in (
        "ln_mean", "ln_centered", "ln_squared", "ln_var", "ln_eps", "ln_shifted", "ln_std"))
    nodes.append(reduce_mean(x, outputs[1] or mean))
    mean = outputs[1] or mean
    if outputs[2]:
        nodes += [helper.make_node("Sub", [x, mean], [centered]),
                  helper.make_node("Mul", [centered, centered], [squared])]
        nodes.append(reduce_mean(squared, variance))
        nodes += [helper.make_node("Constant", [], [eps], value=helper.make_tensor(eps, stash, [], [epsilon])),
                  helper.make_node("Add", [variance, eps], [shifted]),
                  helper.make_node("Sqrt", [shifted], [std]),
                  helper.make_node("Reciprocal", [std], [outputs[2]])]
    return nodes


def _layer_norm(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """LayerNormalization as TVM's converter takes it: its statistics outputs by plain ops
    (_layer_norm_statistics), and a Scale or B that only broadcasts to the normalized shape applied after it."""
    kept, *statistics = _layer_norm_statistics(node, fresh, context)
    return _layer_norm_broadcast(kept, fresh, context) + statistics


def _layer_norm_broadcast(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """NODE, or where its Scale or B has another shape than the normalized axes (one that broadcasts to them, as
    ONNX's Mul and Add do; ONNX Runtime takes it, TVM's layer_norm wants them equal) a LayerNormalization with a
    Scale of ones and no B, then Mul by Scale and Add of B."""
    shape, rank = context.shape(node.input[0]), context.rank(node.input[0])
    if shape is None or not rank:
        return [node]
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1) % rank
    normalized = shape[axis:]
    operands = [name for name in node.input[1:3] if name]
    if not all(isinstance(d, int) for d in normalized) or \
            all(context.shape(name) == normalized for name in operands):
        return [node]
    dtype = context.elem_type(node.input[0])
    ones, plain, scaled = fresh("ln_ones"), fresh("ln_plain"), fresh("ln_scaled")
    y = node.output[0]
    kept = onnx.NodeProto()
    kept.CopyFrom(node)
    kept.input[:] = [node.input[0], ones]
    kept.output[0] = plain
    nodes = [helper.make_node("Constant", [], [ones], value=numpy_helper.from_array(
                 np.ones(normalized, helper.tensor_dtype_to_np_dtype(dtype)), ones)), kept]
    if len(node.input) > 2 and node.input[2]:
        nodes += [helper.make_node("Mul", [plain, node.input[1]], [scaled]),
                  helper.make_node("Add", [scaled, node.input[2]], [y])]
    else:
        nodes.append(helper.make_node("Mul", [plain, node.input[1]], [y]))
    return nodes


def _lp_normalization(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """LpNormalization(x) = x / ReduceL1 or ReduceL2 of x over `axis` (keepdims), as the ONNX reference has it."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    p, axis = attrs.get("p", 2), attrs.get("axis", -1)
    if p not in (1, 2):
        return [node]
    norm = fresh("lp_norm")
    reduce = "ReduceL2" if p == 2 else "ReduceL1"
    if context.opset >= 18:
        axes = fresh("lp_axes")
        nodes = [helper.make_node("Constant", [], [axes], value=helper.make_tensor(axes, onnx.TensorProto.INT64, [1],
                                                                                   [axis])),
                 helper.make_node(reduce, [node.input[0], axes], [norm], keepdims=1)]
    else:
        nodes = [helper.make_node(reduce, [node.input[0]], [norm], axes=[axis], keepdims=1)]
    return nodes + [helper.make_node("Div", [node.input[0], norm], [node.output[0]], name=node.name or fresh("lp"))]


def _skip_layer_norm(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """com.microsoft SkipLayerNormalization (ONNX Runtime's transformer optimizer writes it) as Add + ONNX
    LayerNormalization: TVM's converter wants the optional beta and bias and cannot give the optional outputs."""
    if context.opset < 17:
        return [node]
    inputs = list(node.input) + [""] * (5 - len(node.input))
    outputs = list(node.output) + [""] * (4 - len(node.output))
    epsilon = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-12)
    _check_skip_shape(node, context)
    total = outputs[3] or fresh("skip_sum")
    nodes = []
    if inputs[4]:
        partial = fresh("skip_partial")
        nodes += [helper.make_node("Add", [inputs[0], inputs[1]], [partial]),
                  helper.make_node("Add", [partial, inputs[4]], [total])]
    else:
        nodes.append(helper.make_node("Add", [inputs[0], inputs[1]], [total]))
    norm = helper.make_node("LayerNormalization", [total, inputs[2]] + ([inputs[3]] if inputs[3] else []),
                            [outputs[0], outputs[1], outputs[2]], axis=-1, epsilon=epsilon,
                            name=node.name or fresh("skip_ln"))
    while norm.output and not norm.output[-1]:
        del norm.output[-1]
    return nodes + _layer_norm_statistics(norm, fresh, context)


def _check_skip_shape(node: onnx.NodeProto, context) -> None:
    """Refuse a skip that does not broadcast to the input's shape (ONNX Runtime's contract for the op: it reads
    past a larger skip instead of refusing it); record the outputs' shapes, which ONNX shape inference cannot."""
    data, skip = context.shape(node.input[0]), context.shape(node.input[1])
    if data is None:
        return
    if skip is not None and all(isinstance(d, int) for d in data + skip):
        try:
            fits = list(np.broadcast_shapes(tuple(data), tuple(skip))) == data
        except ValueError:
            fits = False
        if not fits:
            raise KilnError(f"SkipLayerNormalization {node.name or node.output[0]!r}: skip of shape {skip} does not "
                            f"broadcast to the input's shape {data}",
                            "the skip must have the input's shape, or (1, seq, hidden) / (seq, hidden)")
    elem_type = context.elem_type(node.input[0])
    for index, name in enumerate(node.output):
        context.learn(name, elem_type, data if index in (0, 3) else data[:-1] + [1])


MAX_CUMPROD_STEPS = 256  # longer axes would write out too many nodes


def _cumulative_product(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """CumProd (no converter in TVM's importer) over a static axis of n elements as n - 1 running Muls of its
    slices, concatenated (exclusive: shifted by a slice of ones; reverse: from the end)."""
    axis_value, shape = context.constant(node.input[1]), context.shape(node.input[0])
    if axis_value is None or shape is None:
        return [node]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(np.asarray(axis_value).reshape(-1)[0]) % len(shape)
    steps = shape[axis]
    if not isinstance(steps, int) or not 0 < steps <= MAX_CUMPROD_STEPS:
        return [node]
    nodes: list[onnx.NodeProto] = []

    def const(value: np.ndarray) -> str:
        name = fresh("cumprod_c")
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        return name

    axes = const(np.array([axis], np.int64))
    pieces = []
    for i in range(steps):
        piece = fresh("cumprod_slice")
        nodes.append(helper.make_node("Slice", [node.input[0], const(np.array([i], np.int64)),
                                                const(np.array([i + 1], np.int64)), axes], [piece]))
        pieces.append(piece)
    order = pieces[::-1] if attrs.get("reverse", 0) else pieces
    running, products = None, []
    if attrs.get("exclusive", 0):
        one, shape_of, ones = fresh("cumprod_one"), fresh("cumprod_shape"), fresh("cumprod_ones")
        nodes += [helper.make_node("Cast", [const(np.array(1, np.int64))], [one], to=context.elem_type(node.input[0])),
                  helper.make_node("Shape", [order[0]], [shape_of]),
                  helper.make_node("Expand", [one, shape_of], [ones])]
        products.append(ones)
        order = order[:-1]
    for piece in order:
        if running is None:
            running = piece
        else:
            product = fresh("cumprod")
            nodes.append(helper.make_node("Mul", [running, piece], [product]))
            running = product
        products.append(running)
    if attrs.get("reverse", 0):
        products = products[::-1]
    nodes.append(helper.make_node("Concat", products, [node.output[0]], axis=axis, name=node.name or fresh("cumprod")))
    return nodes


class _Context:
    """What a rewrite may need to know about the model: its opset, and each tensor's rank and element type
    (from ONNX shape inference, where it knows them)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.opset = default_opset(model)
        self.learned: list[onnx.ValueInfoProto] = []  # contrib ops' outputs, typed by what the ops do
        self.stale = False  # learned types that inference has not yet carried to the ops after them

    @functools.cached_property
    def types(self) -> dict:
        """Tensor types by name, inferred on first use (most models need no rule that asks)."""
        return self._inferred(self.model)

    def _inferred(self, model: onnx.ModelProto) -> dict:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - without inferred types, rewrites that need them are skipped
            inferred = model
        graph = inferred.graph
        types = {v.name: v.type.tensor_type for v in list(graph.input) + list(graph.value_info)
                 + list(graph.output) if v.type.HasField("tensor_type")}
        types.update({t.name: onnx.TypeProto.Tensor(elem_type=t.data_type, shape=onnx.TensorShapeProto(
            dim=[onnx.TensorShapeProto.Dimension(dim_value=d) for d in t.dims])) for t in graph.initializer})
        return types

    def rank(self, name: str) -> int | None:
        found = self.types.get(name)
        return len(found.shape.dim) if found is not None and found.HasField("shape") else None

    def elem_type(self, name: str) -> int:
        found = self.types.get(name)
        return found.elem_type if found is not None else onnx.TensorProto.FLOAT

    def learn(self, name: str, elem_type: int, shape: list[int | str]) -> None:
        """Record NAME's type where a rewrite knows it and shape inference did not (a contrib op's outputs). What
        the op computes overrides what the model declares for it (a value_info or graph output of another shape)."""
        if name and self.types.get(name) != (known := helper.make_tensor_type_proto(elem_type, shape).tensor_type):
            self.types[name] = known
            self.learned.append(helper.make_tensor_value_info(name, elem_type, shape))
            self.stale = True

    def shape(self, name: str) -> list[int | str] | None:
        """NAME's dims (ints where static, else their names), or None where its rank is unknown. An unknown one
        is looked for again once rewrites have learned contrib ops' outputs: inference carries those on (a MatMul
        after a BiasGelu)."""
        found = self.types.get(name)
        if (found is None or not found.HasField("shape")) and self.stale:
            self.stale = False
            informed = onnx.ModelProto()
            informed.CopyFrom(self.model)
            informed.graph.value_info.extend(self.learned)
            for key, value in self._inferred(informed).items():
                self.types.setdefault(key, value)
                if not self.types[key].HasField("shape") and value.HasField("shape"):
                    self.types[key] = value
            found = self.types.get(name)
        if found is None or not found.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in found.shape.dim]

    def constant(self, name: str):
        """NAME's value where it is an initializer or a Constant node's output, else None."""
        for tensor in self.model.graph.initializer:
            if tensor.name == name:
                return numpy_helper.to_array(tensor)
        for node in self.model.graph.node:
            if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
                return numpy_helper.to_array(node.attribute[0].t)
        return None


REWRITES = {"Cosh": _hyperbolic, "Sinh": _hyperbolic, "LayerNormalization": _layer_norm,
            "LpNormalization": _lp_normalization, "CumProd": _cumulative_product,
            "LSTM": recurrent.unroll, "GRU": recurrent.unroll, "RNN": recurrent.unroll,
            "Resize": spatial_rewrites.resize, "ConvTranspose": spatial_rewrites.conv_transpose}
CONTRIB_REWRITES = {("com.microsoft", "SkipLayerNormalization"): _skip_layer_norm}
# contrib ops (kept for TVM's converters) whose output has their first input's shape, which ONNX shape inference
# does not know: recorded, so a SkipLayerNormalization after them can check its skip
SHAPE_KEEPING_CONTRIB = {("com.microsoft", op) for op in ("BiasGelu", "FastGelu", "Gelu")}


def rewrite_model(model: onnx.ModelProto) -> int:
    """Rewrite every node of MODEL's graphs that REWRITES names, in place; returns how many rules applied."""
    if not any(n.op_type in REWRITES or (n.domain, n.op_type) in CONTRIB_REWRITES for n in _all_nodes(model.graph)):
        return 0
    return rewrite_ops(model.graph, _Context(model))


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def rewrite_ops(graph: onnx.GraphProto, context: _Context, counter: itertools.count | None = None) -> int:
    """Rewrite every node of GRAPH (and its subgraphs) that REWRITES names, in place; returns how many. New
    tensor names are numbered by COUNTER, shared with the subgraphs (they see the outer graph's names)."""
    counter = counter if counter is not None else itertools.count(1)

    def fresh(base: str) -> str:
        return f"kiln_{base}_{next(counter)}"

    rewritten, done = [], 0
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                done += rewrite_ops(attr.g, context, counter)
        rule = REWRITES.get(node.op_type) if node.domain in DEFAULT_DOMAINS else \
            CONTRIB_REWRITES.get((node.domain, node.op_type))
        if (node.domain, node.op_type) in SHAPE_KEEPING_CONTRIB \
                and (shape := context.shape(node.input[0])) is not None:
            context.learn(node.output[0], context.elem_type(node.input[0]), shape)
        if rule is None:
            rewritten.append(node)
        else:
            rewritten.extend(rule(node, fresh, context))
            done += 1
    del graph.node[:]
    graph.node.extend(rewritten)
    return done
