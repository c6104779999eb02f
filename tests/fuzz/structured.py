"""Structure-aware mutations of corpus windows (tests/fuzz/windows.py) that keep the model valid ONNX, so the case
gets past onnx.checker into TVM: attribute values the schema allows, optional attributes added, initializers
reshaped or their integers changed, an op swapped for another of its signature class, an input rewired to
another value of its dtype, graph input dims changed, an optional input dropped. Case N is reproducible: it is
the seed of its random generator."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnx.defs
from onnx import AttributeProto, helper, numpy_helper

from compiler.frontend.containment import in_child
from tests.fuzz.windows import Seed, window

# ops that take and give the same signature: swapping one for another keeps the graph well typed
SWAP_CLASSES = [
    ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Erf", "Sqrt", "Softplus", "Softsign", "Sin", "Cos", "Floor",
     "Ceil", "Round", "Reciprocal", "Log", "HardSwish", "Identity", "Elu", "Selu", "LeakyRelu", "HardSigmoid",
     "Sign", "Mish", "Gelu"],
    ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"],
    ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"],
    ["And", "Or", "Xor"],
    ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
     "ReduceSumSquare"],
    ["MaxPool", "AveragePool", "LpPool"],
    ["GlobalAveragePool", "GlobalMaxPool"],
    ["Softmax", "LogSoftmax", "Hardmax"],
    ["ArgMax", "ArgMin"],
    ["MatMul", "Add", "Mul"],
    ["Unsqueeze", "Squeeze"],
    ["Cast", "CastLike"],
]
FLAGS = {"keepdims", "transA", "transB", "noop_with_empty_axes", "exclusive", "reverse", "ceil_mode",
         "count_include_pad", "upper", "largest", "sorted", "select_last_index", "allowzero", "detect_negative",
         "detect_positive", "center_point_box", "training_mode", "stash_type"}
STRINGS = {
    "auto_pad": [b"NOTSET", b"SAME_UPPER", b"SAME_LOWER", b"VALID"],
    "mode": [b"constant", b"reflect", b"edge", b"wrap", b"nearest", b"linear", b"cubic", b"DCR", b"CRD"],
    "coordinate_transformation_mode": [b"half_pixel", b"asymmetric", b"align_corners", b"pytorch_half_pixel",
                                       b"tf_crop_and_resize", b"half_pixel_symmetric"],
    "nearest_mode": [b"round_prefer_floor", b"round_prefer_ceil", b"floor", b"ceil"],
    "approximate": [b"none", b"tanh"],
    "direction": [b"LEFT", b"RIGHT"],
    "reduction": [b"none", b"add", b"mul", b"max", b"min"],
    "keep_aspect_ratio_policy": [b"stretch", b"not_larger", b"not_smaller"],
}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _opset(model: onnx.ModelProto, domain: str = "") -> int:
    return next((o.version for o in model.opset_import if o.domain in (domain, "ai.onnx" if not domain else domain)),
                1)


def _schema(model: onnx.ModelProto, node: onnx.NodeProto):
    try:
        return onnx.defs.get_schema(node.op_type, _opset(model, node.domain), node.domain)
    except onnx.defs.SchemaError:
        return None


def _int_value(rng: random.Random, name: str, old: int) -> int:
    if name in FLAGS:
        return 1 - old if old in (0, 1) else rng.choice([0, 1])
    if name in ("axis", "batch_dims", "blocksize", "group", "k", "to", "num_outputs"):
        return rng.choice([-3, -2, -1, 0, 1, 2, 3, old + 1, old - 1])
    return rng.choice([0, 1, 2, old + 1, max(old - 1, 0), old * 2])


def _ints_value(rng: random.Random, name: str, old: list[int]) -> list[int]:
    if name == "perm":
        values = list(old)
        rng.shuffle(values)
        return values
    if name in ("pads", "strides", "dilations", "kernel_shape", "output_padding", "output_shape"):
        low = 0 if name in ("pads", "output_padding") else 1
        return [rng.choice([low, low + 1, low + 2, 3, 7]) for _ in old] if old else [low + 1] * 2
    if name == "axes":
        return rng.sample([-4, -3, -2, -1, 0, 1, 2, 3], rng.randint(1, max(len(old), 1) + 1))
    return [v + rng.choice([-1, 0, 1]) for v in old] or [1]


def _mutated_attribute(rng: random.Random, attr: onnx.AttributeProto) -> None:
    if attr.type == AttributeProto.INT:
        attr.i = _int_value(rng, attr.name, attr.i)
    elif attr.type == AttributeProto.INTS:
        attr.ints[:] = _ints_value(rng, attr.name, list(attr.ints))
    elif attr.type == AttributeProto.FLOAT:
        attr.f = rng.choice([0.0, 1e-12, 1e-5, 0.5, 2.0, -1.0, attr.f * 10, -attr.f])
    elif attr.type == AttributeProto.FLOATS:
        attr.floats[:] = [v * rng.choice([0.5, 1.0, 2.0, -1.0]) for v in attr.floats]
    elif attr.type == AttributeProto.STRING and attr.name in STRINGS:
        attr.s = rng.choice(STRINGS[attr.name])
    elif attr.type == AttributeProto.TENSOR:
        value = numpy_helper.to_array(attr.t)
        attr.t.CopyFrom(numpy_helper.from_array(_perturbed(rng, value), attr.t.name))


def _perturbed(rng: random.Random, value: np.ndarray) -> np.ndarray:
    """VALUE with one element changed the way a broken export would: off by one, negated, zero, -1, or huge for
    integers; scaled, zero, negative or infinite for floats."""
    out = value.copy()
    if out.size == 0 or out.dtype.kind not in "iuf":
        return out
    flat = out.reshape(-1)
    i = rng.randrange(flat.size)
    if flat.dtype.kind in "iu":
        info = np.iinfo(flat.dtype)
        choices = [int(flat[i]) + 1, int(flat[i]) - 1, -int(flat[i]), 0, -1, 2 ** 31, info.max, info.min]
        flat[i] = min(max(rng.choice(choices), info.min), info.max)
    else:
        flat[i] = rng.choice([flat[i] * 2, 0.0, -flat[i], 1e4, np.inf, -np.inf])
    return out


def _attribute(rng, model, feeds):
    attrs = [a for n in model.graph.node for a in n.attribute if a.type != AttributeProto.GRAPH]
    if attrs:
        _mutated_attribute(rng, rng.choice(attrs))


def _add_attribute(rng, model, feeds):
    """An optional attribute the node's schema has and the node does not set, at a plausible value."""
    node = rng.choice(list(model.graph.node))
    schema = _schema(model, node)
    if schema is None:
        return
    present = {a.name for a in node.attribute}
    missing = [a for a in schema.attributes.values() if a.name not in present and not a.required]
    kinds = {AttributeProto.INT: 0, AttributeProto.INTS: [1, 1], AttributeProto.FLOAT: 1.0,
             AttributeProto.FLOATS: [1.0], AttributeProto.STRING: b""}
    missing = [a for a in missing if a.type in kinds]
    if not missing:
        return
    spec = rng.choice(missing)
    attr = helper.make_attribute(spec.name, kinds[spec.type], attr_type=spec.type)
    if spec.type == AttributeProto.STRING:
        attr.s = rng.choice(STRINGS.get(spec.name, [b"none"]))
    else:
        _mutated_attribute(rng, attr)
    node.attribute.append(attr)


def _initializer_shape(rng, model, feeds):
    """An initializer reshaped (a dim changed, a leading 1 added or dropped, two dims swapped), refilled with values
    drawn from its own."""
    tensors = [t for t in model.graph.initializer if t.data_type != onnx.TensorProto.STRING]
    if not tensors:
        return
    tensor = rng.choice(tensors)
    value = numpy_helper.to_array(tensor)
    shape = list(value.shape)
    choice = rng.choice(["dim", "lead", "swap"])
    if choice == "dim" and shape:
        i = rng.randrange(len(shape))
        shape[i] = max(1, shape[i] + rng.choice([-1, 1, shape[i]]))
    elif choice == "lead":
        shape = shape[1:] if shape and shape[0] == 1 and rng.random() < 0.5 else [1, *shape]
    elif len(shape) >= 2:
        i, j = rng.sample(range(len(shape)), 2)
        shape[i], shape[j] = shape[j], shape[i]
    if int(np.prod(shape)) > 1 << 20:
        return
    flat = value.reshape(-1) if value.size else np.zeros(1, value.dtype)
    refill = np.random.default_rng(rng.randrange(1 << 30)).choice(flat, size=int(np.prod(shape))).reshape(shape)
    tensor.CopyFrom(numpy_helper.from_array(refill.astype(value.dtype), tensor.name))


def _initializer_values(rng, model, feeds):
    """One element of an integer initializer (a shape, axes, starts, ends, indices) or a float one changed."""
    tensors = list(model.graph.initializer)
    integers = [t for t in tensors if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)]
    pool = integers if integers and rng.random() < 0.8 else tensors
    if pool:
        tensor = rng.choice(pool)
        tensor.CopyFrom(numpy_helper.from_array(_perturbed(rng, numpy_helper.to_array(tensor)), tensor.name))


def _op_swap(rng, model, feeds):
    """A node's op replaced by another of its signature class; attributes the new op's schema lacks are dropped."""
    candidates = [(n, cls) for n in model.graph.node if not n.domain for cls in SWAP_CLASSES if n.op_type in cls]
    if not candidates:
        return
    node, cls = rng.choice(candidates)
    node.op_type = rng.choice([op for op in cls if op != node.op_type])
    schema = _schema(model, node)
    if schema is not None:
        keep = [a for a in node.attribute if a.name in schema.attributes]
        del node.attribute[:]
        node.attribute.extend(keep)
        if len(node.input) > schema.max_input:
            del node.input[schema.max_input:]


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """MODEL with onnx's inferred shapes, inferred in a child process: some mutants kill onnx's inference (a
    GatherND with a negative batch_dims), which raises ChildDied here instead."""
    data = in_child(lambda: onnx.shape_inference.infer_shapes(model).SerializeToString())
    return onnx.load_from_string(data)


def _types(model: onnx.ModelProto, feeds) -> dict[str, int]:
    """The element type of every value whose type is known without shape inference, plus inferred ones."""
    try:
        inferred = _inferred(model)
    except Exception:  # noqa: BLE001 - a mutated model may not infer; rewire then sticks to what is declared
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)
             + list(graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _rewire(rng, model, feeds):
    """A node input rewired to another value of the same element type that is defined before the node."""
    types = _types(model, feeds)
    graph = model.graph
    defined = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    choices = []
    for node in graph.node:
        for slot, name in enumerate(node.input):
            others = [v for v in defined if v != name and types.get(v) and types.get(v) == types.get(name)]
            if name and others:
                choices.append((node, slot, others))
        defined.extend(o for o in node.output if o)
    if choices:
        node, slot, others = rng.choice(choices)
        node.input[slot] = rng.choice(others)


def _input_dims(rng, model, feeds):
    """A graph input's dim changed; its feed becomes random values (integers from the old feed's range)."""
    inputs = [v for v in model.graph.input if v.type.tensor_type.shape.dim]
    if not inputs:
        return
    value = rng.choice(inputs)
    dims = value.type.tensor_type.shape.dim
    dim = rng.choice(list(dims))
    dim.dim_value = rng.choice([1, 2, 3, 5, 8, dim.dim_value + 1, max(dim.dim_value - 1, 1)])
    old = feeds[value.name]
    shape = [d.dim_value for d in dims]
    gen = np.random.default_rng(rng.randrange(1 << 30))
    if old.dtype.kind in "iu":
        low, high = (int(old.min()), int(old.max()) + 1) if old.size else (0, 2)
        feeds[value.name] = gen.integers(low, high, shape).astype(old.dtype)
    elif old.dtype.kind == "b":
        feeds[value.name] = gen.integers(0, 2, shape).astype(bool)
    else:
        feeds[value.name] = gen.standard_normal(shape).astype(old.dtype)


def _drop_optional_input(rng, model, feeds):
    """An optional input (a bias, Clip's bounds, Resize's roi) left out, as the schema allows."""
    choices = []
    for node in model.graph.node:
        schema = _schema(model, node)
        if schema is None:
            continue
        for slot, name in enumerate(node.input):
            formal = schema.inputs[min(slot, len(schema.inputs) - 1)]
            if name and formal.option == onnx.defs.OpSchema.FormalParameterOption.Optional:
                choices.append((node, slot))
    if choices:
        node, slot = rng.choice(choices)
        if slot == len(node.input) - 1:
            del node.input[slot]
        else:
            node.input[slot] = ""


MUTATIONS = [_attribute, _attribute, _add_attribute, _initializer_shape, _initializer_values, _initializer_values,
             _op_swap, _op_swap, _rewire, _rewire, _input_dims, _drop_optional_input]


def _tidy(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Drop graph inputs and initializers no node reads any more (after a rewire): ONNX Runtime refuses feeds for
    inputs that are not there, and an unread input says nothing."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for value in [v for v in model.graph.input if v.name not in read]:
        model.graph.input.remove(value)
        feeds.pop(value.name, None)
    for tensor in [t for t in model.graph.initializer if t.name not in read]:
        model.graph.initializer.remove(tensor)


def _redeclare_outputs(model: onnx.ModelProto) -> None:
    """The graph outputs declared as shape inference finds them after the mutations (the window's declarations were
    the unmutated model's); an output inference cannot type keeps its old declaration."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    for value in bare.graph.output:
        value.ClearField("type")
    try:
        inferred = {v.name: v for v in _inferred(bare).graph.output}
    except Exception:  # noqa: BLE001 - inference fails on some mutants: the checker will say why
        return
    for value in model.graph.output:
        found = inferred.get(value.name)
        if found is not None and found.type.tensor_type.elem_type and found.type.tensor_type.HasField("shape"):
            value.type.CopyFrom(found.type)


def structured_case(case: int, seeds: dict[str, Seed]) -> tuple[bytes, dict[str, np.ndarray], str]:
    """Fuzz case CASE: a window of 1-12 nodes of a corpus model with 0-3 structure-aware mutations. Returns the
    serialized model, the feeds of its inputs, and what was done (seed model, window size, mutation names)."""
    rng = random.Random(case)
    name = rng.choice(sorted(seeds))
    size = rng.randint(1, 12)
    model, feeds = window(seeds[name], rng, size)
    done = [f"{name}[{len(model.graph.node)}]"]
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        mutation(rng, model, feeds)
        done.append(mutation.__name__.lstrip("_"))
    _tidy(model, feeds)
    if len(done) > 1:
        _redeclare_outputs(model)
    return model.SerializeToString(), feeds, " ".join(done)
