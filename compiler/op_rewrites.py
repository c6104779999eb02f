"""ONNX ops rewritten into other ONNX ops before import, where TVM's importer has no converter or one whose code
Kiln cannot build. Each rewrite keeps the node's outputs, so the rest of the graph is untouched.

- Cosh(x) = Mean(e, 1/e) and Sinh(x) = Mean(e, -1/e) with e = Exp(x): TVM lowers cosh / sinh to intrinsics its
  LLVM codegen does not know once they are vectorized ("unknown intrinsic tirx.cosh"). Mean needs no constant of
  x's dtype, so the rewrite works at every opset.
"""

from __future__ import annotations

import itertools

import onnx
from onnx import helper


def _hyperbolic(node: onnx.NodeProto, fresh) -> list[onnx.NodeProto]:
    e, inverse = fresh("exp"), fresh("inv")
    nodes = [helper.make_node("Exp", [node.input[0]], [e], name=e),
             helper.make_node("Reciprocal", [e], [inverse], name=inverse)]
    if node.op_type == "Sinh":
        negated = fresh("neg")
        nodes.append(helper.make_node("Neg", [inverse], [negated], name=negated))
        inverse = negated
    nodes.append(helper.make_node("Mean", [e, inverse], [node.output[0]], name=node.name or fresh("mean")))
    return nodes


REWRITES = {"Cosh": _hyperbolic, "Sinh": _hyperbolic}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def rewrite_ops(graph: onnx.GraphProto, counter: itertools.count | None = None) -> int:
    """Rewrite every node of GRAPH (and its subgraphs) that REWRITES names, in place; returns how many. New
    tensor names are numbered by COUNTER, shared with the subgraphs (they see the outer graph's names)."""
    counter = counter if counter is not None else itertools.count(1)

    def fresh(base: str) -> str:
        return f"kiln_{base}_{next(counter)}"

    rewritten, done = [], 0
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                done += rewrite_ops(attr.g, counter)
        rule = REWRITES.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
        if rule is None:
            rewritten.append(node)
        else:
            rewritten.extend(rule(node, fresh))
            done += 1
    del graph.node[:]
    graph.node.extend(rewritten)
    return done
