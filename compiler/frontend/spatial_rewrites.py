"""Resize and ConvTranspose forms TVM's converters do not take, rewritten into ones they do (op_rewrites.py runs
these rules). Each rewrite is exact: where it would not be (a scale that does not divide the size), the node is
left as it is.

- Resize with `axes` (opset 18): scales / sizes / roi given for some axes only, expanded to every axis (TVM's
  converter reads them as if they covered all: "Resize2D expects ... a 2-dim shape"). Needs the input's rank, and
  for sizes its static dims.
- Resize with keep_aspect_ratio_policy not_larger / not_smaller: the sizes the policy gives, stretched, where the
  policy's scale equals size / input size on every resized axis (then the coordinates are the same).
- Resize with coordinate_transformation_mode half_pixel_symmetric: half_pixel, where every resized axis's output
  size is its scale times its input size exactly (the two modes differ only when it is not).
- ConvTranspose with `output_shape`: the pads (or output_padding) that give that shape, as the ONNX spec computes
  them (TVM's converter ignores output_shape). Needs the input's static spatial dims and the kernel's size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _with_attrs(node: onnx.NodeProto, drop: set[str], **updates) -> onnx.NodeProto:
    """A copy of NODE without the attributes DROP, with UPDATES set."""
    attrs = {k: v for k, v in _attrs(node).items() if k not in drop and k not in updates}
    attrs.update(updates)
    return helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name, domain=node.domain,
                            **{k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()})


def _text(attrs: dict, name: str, default: str) -> str:
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def resize(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """NODE (a Resize) in a form TVM's converter takes, with new constants before it; NODE itself if none."""
    attrs = _attrs(node)
    if "axes" not in attrs and _text(attrs, "keep_aspect_ratio_policy", "stretch") == "stretch" and \
            _text(attrs, "coordinate_transformation_mode", "half_pixel") != "half_pixel_symmetric":
        return [node]  # the common forms: no shape inference for them
    inputs = list(node.input) + [""] * (4 - len(node.input))
    rank, shape = context.rank(inputs[0]), context.shape(inputs[0])
    if rank is None:
        return [node]
    roi = context.constant(inputs[1]) if inputs[1] else None
    scales = context.constant(inputs[2]) if inputs[2] else None
    sizes = context.constant(inputs[3]) if inputs[3] else None
    if (inputs[2] and scales is None) or (inputs[3] and sizes is None):
        return [node]  # computed at run time: --input-value may fix them, not this rule
    scales = None if scales is not None and scales.size == 0 else scales
    axes = [a % rank for a in attrs.get("axes", range(rank))]
    static = shape is not None and all(isinstance(d, int) for d in shape)
    if "axes" in attrs:
        if scales is not None:
            full = np.ones(rank, scales.dtype)
            full[axes] = scales
            scales = full
        if sizes is not None:
            if not static:
                return [node]
            full = np.array(shape, np.int64)
            full[axes] = sizes
            sizes = full
        if roi is not None and roi.size == 2 * len(axes):
            full = np.concatenate([np.zeros(rank, roi.dtype), np.ones(rank, roi.dtype)])
            full[axes] = roi[:len(axes)]
            full[[rank + a for a in axes]] = roi[len(axes):]
            roi = full
    drop = {"axes"}
    policy = _text(attrs, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch" and sizes is not None:
        if not static:
            return [node]
        ratios = [sizes[a] / shape[a] for a in axes]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        sizes = np.array([int(scale * shape[a] + 0.5) if a in axes else shape[a] for a in range(rank)], np.int64)
        if any(abs(sizes[a] / shape[a] - scale) > 1e-12 for a in axes):
            return [node]  # the policy's scale is not size / input size: the coordinates would differ
        drop.add("keep_aspect_ratio_policy")
    updates = {}
    if _text(attrs, "coordinate_transformation_mode", "half_pixel") == "half_pixel_symmetric":
        if sizes is None and not (static and scales is not None and all(
                float(scales[a] * shape[a]).is_integer() for a in axes)):
            return [node]
        updates["coordinate_transformation_mode"] = "half_pixel"
    if not drop & set(attrs) and not updates:
        return [node]
    nodes = []

    def constant(value, base: str) -> str:
        name = fresh(base)
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name)))
        return name

    new = _with_attrs(node, drop, **updates)
    del new.input[:]
    new.input.extend([inputs[0], constant(roi, "roi") if roi is not None else inputs[1],
                      constant(scales, "scales") if scales is not None else "",
                      *([constant(sizes, "sizes")] if sizes is not None else [])])
    return [*nodes, new]


def same_padding(total: int, upper: bool) -> tuple[int, int]:
    """(before, after) of TOTAL padding split as auto_pad SAME_UPPER (UPPER: the odd one after) or SAME_LOWER."""
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def conv_transpose(node: onnx.NodeProto, _fresh, context) -> list[onnx.NodeProto]:
    """NODE (a ConvTranspose) with its `output_shape` turned into pads / output_padding; NODE itself if none."""
    attrs = _attrs(node)
    if "output_shape" not in attrs:
        return [node]
    x, w = context.shape(node.input[0]), context.shape(node.input[1])
    if x is None or w is None or not all(isinstance(d, int) for d in x[2:] + w[2:]):
        return [node]
    spatial = len(x) - 2
    wanted = list(attrs["output_shape"])[-spatial:]
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    kernel = list(attrs.get("kernel_shape", w[2:]))
    extra = list(attrs.get("output_padding", [0] * spatial))
    upper = _text(attrs, "auto_pad", "NOTSET") == "SAME_UPPER"
    begin, end = [0] * spatial, [0] * spatial
    for i in range(spatial):
        total = strides[i] * (x[2 + i] - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1 - wanted[i]
        if total < 0:
            extra[i] -= total  # a larger output than the stride gives: rows and columns with no input
            continue
        begin[i], end[i] = same_padding(total, upper)
    return [_with_attrs(node, {"output_shape", "auto_pad"}, pads=begin + end, output_padding=extra)]
