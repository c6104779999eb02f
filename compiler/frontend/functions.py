"""ONNX ops defined by a function body, expanded into that body before import where TVM has no converter for them.

Many ONNX ops (SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, Celu, RMSNormalization, RotaryEmbedding,
Attention, CenterCropPad, the window functions, ...) come with a reference definition as a graph of simpler ops,
in the op's schema (for some, built from the node's attributes and input types: a "context-dependent" function).
ONNX Runtime runs some of them that way too. Where TVM's importer has no converter, or one written for another op
of the same name (its `Attention` converter is com.microsoft's, not opset 23's), the node is replaced by its body;
bodies that use such ops in turn are expanded again.

In: a ModelProto at its final opset. Out: the same model, expanded nodes replaced by their bodies (names
prefixed by the node's), everything else untouched.
"""

from __future__ import annotations

import logging

import onnx
import onnx.inliner
from onnx import defs, helper

from .opsets import DEFAULT_DOMAINS, default_opset

log = logging.getLogger(__name__)

# TVM converters registered under an op name that means something else in the default domain.
EXPAND_FIRST = {"Attention"}
_PRIVATE_DOMAIN = "kiln.expanded"
MAX_DEPTH = 4  # function bodies that use function ops (SoftmaxCrossEntropyLoss -> NegativeLogLikelihoodLoss)


def _schema(op_type: str, opset: int):
    try:
        return defs.get_schema(op_type, opset, "")
    except defs.SchemaError:
        return None


def has_function_body(node: onnx.NodeProto, opset: int) -> bool:
    """Whether NODE (default domain) has an ONNX function body at OPSET or below."""
    schema = _schema(node.op_type, opset) if node.domain in DEFAULT_DOMAINS else None
    return schema is not None and any(v <= opset for v in [*schema.function_opset_versions,
                                                          *schema.context_dependent_function_opset_versions])


def _body(node: onnx.NodeProto, schema, opset: int, types: dict) -> onnx.FunctionProto | None:
    """The function body of NODE for the newest function version at or below OPSET, or None."""
    plain = [v for v in schema.function_opset_versions if v <= opset]
    context = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if not plain and not context:
        return None
    body = onnx.FunctionProto()
    if context and (not plain or max(context) >= max(plain)):
        input_types = [types.get(name, onnx.TypeProto()) for name in node.input]
        if any(not t.HasField("tensor_type") for t, name in zip(input_types, node.input) if name):
            return None  # a context-dependent body needs every input's type
        body.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            max(context), node.SerializeToString(), [t.SerializeToString() for t in input_types]))
    else:
        body.ParseFromString(schema.get_function_with_opset_version(max(plain)))
    return body if body.node else None


def _with_defaults(node: onnx.NodeProto, schema) -> onnx.NodeProto:
    """A copy of NODE that spells out every attribute its schema gives a default (bodies refer to them)."""
    full = onnx.NodeProto()
    full.CopyFrom(node)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value.name:
            full.attribute.append(attr.default_value)
    return full


def _inferred_types(model: onnx.ModelProto) -> dict:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without types, only plain (not context-dependent) bodies are expanded
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return types


def expand_functions(model: onnx.ModelProto, supported: set[str], everything: bool = False) -> onnx.ModelProto:
    """MODEL with every top-level default-domain node that has no converter in SUPPORTED (or is in EXPAND_FIRST;
    or, with EVERYTHING, any node) and has a function body replaced by that body, repeatedly (see the module
    docstring). A body the inliner cannot place leaves its node as it was."""
    opset = default_opset(model)
    for _ in range(MAX_DEPTH):
        wanted = [i for i, n in enumerate(model.graph.node) if n.domain in DEFAULT_DOMAINS
                  and (everything or n.op_type not in supported or n.op_type in EXPAND_FIRST)]
        if not wanted:
            break
        types = _inferred_types(model)
        functions, calls = [], {}
        for index in wanted:
            node = model.graph.node[index]
            schema = _schema(node.op_type, opset)
            if schema is None:
                continue
            call = _with_defaults(node, schema)
            body = _body(call, schema, opset, types)
            if body is None:
                continue
            body.domain, body.name = _PRIVATE_DOMAIN, f"{node.op_type}_{len(functions)}"
            call.domain, call.op_type = _PRIVATE_DOMAIN, body.name
            calls[index] = call
            functions.append(body)
        if not functions:
            break
        log.info("expanding %d op(s) into their ONNX function bodies", len(functions))
        expanded = _inline(model, calls, functions, opset)
        if expanded is None:
            break
        model = expanded
    return model


def _inline(model: onnx.ModelProto, calls: dict, functions: list, opset: int) -> onnx.ModelProto | None:
    """A copy of MODEL (at default-domain OPSET) whose nodes named in CALLS ({node index: call node}) call
    FUNCTIONS and are inlined; None when the inliner fails (it asserts on types it cannot infer)."""
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    for index, call in calls.items():
        trial.graph.node[index].CopyFrom(call)
    typed = {v.name for v in [*trial.graph.input, *trial.graph.value_info, *trial.graph.output]}
    # the inliner reads each call input's type from value_info, which weights do not have
    trial.graph.value_info.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in trial.graph.initializer if t.name not in typed)
    trial.functions.extend(functions)
    trial.opset_import.append(helper.make_opsetid(_PRIVATE_DOMAIN, 1))
    convert = any(o.domain in DEFAULT_DOMAINS and o.version != opset for f in functions for o in f.opset_import)
    try:
        trial = onnx.inliner.inline_local_functions(trial, convert_version=convert)
    except Exception as err:  # noqa: BLE001 - the inliner raises bare RuntimeErrors from C++
        log.info("cannot expand %s: %s", ", ".join(sorted({f.name for f in functions})), str(err).splitlines()[0])
        return None
    kept = [o for o in trial.opset_import if o.domain != _PRIVATE_DOMAIN]
    del trial.opset_import[:]
    trial.opset_import.extend(kept)
    return trial
