"""LSTM, GRU and RNN unrolled into plain ONNX ops before import (TVM's importer has no converter for them).

Where the sequence length is static (fixed in the model or by --input-shape), each node becomes its T time steps
written out: per step and direction one Gemm of the input and one of the hidden state, the gate activations and
the state update, exactly as the ONNX spec defines them (gate order i, o, f, c for LSTM and z, r, h for GRU;
peepholes, clip, input_forget, linear_before_reset, layout 0 and 1, initial states, custom activations).
sequence_lens masks the steps past each sequence's end (forward direction; reverse and bidirectional ones only
where every length is the full one). The result keeps the node's outputs, Y, Y_h and Y_c, so the rest of the
graph is untouched. A node this cannot unroll is left as it is, and the unsupported-operator error names it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .node_builder import NodeBuilder

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
MAX_STEPS = 512  # longer sequences would write out too many nodes: left to the unsupported-operator error


_Builder = NodeBuilder


def _activation(b: _Builder, name: str, x: str, alpha: float | None, beta: float | None, dtype) -> str:
    """X through the recurrent activation NAME (the ONNX spec's list), with its alpha / beta."""
    simple = {"Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"}
    if name in simple:
        return b.op(name, [x])
    if name == "HardSigmoid":
        return b.op("HardSigmoid", [x], alpha=0.2 if alpha is None else alpha, beta=0.5 if beta is None else beta)
    if name == "LeakyRelu":
        return b.op("LeakyRelu", [x], alpha=0.01 if alpha is None else alpha)
    if name == "Elu":
        return b.op("Elu", [x], alpha=1.0 if alpha is None else alpha)
    if name == "ThresholdedRelu":
        return b.op("ThresholdedRelu", [x], alpha=1.0 if alpha is None else alpha)
    if name in ("ScaledTanh", "Affine"):
        a, c = b.const(np.array(alpha if alpha is not None else 1.0, dtype)), b.const(np.array(beta or 0.0, dtype))
        if name == "Affine":
            return b.op("Add", [b.op("Mul", [x, a]), c])
        return b.op("Mul", [b.op("Tanh", [b.op("Mul", [x, c])]), a])
    raise ValueError(f"activation {name}")


def unroll(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    """NODE (LSTM, GRU or RNN) as its time steps in plain ops, or [NODE] when it cannot be unrolled here."""
    try:
        return _unroll(node, fresh, context)
    except ValueError:
        return [node]


def _unroll(node: onnx.NodeProto, fresh, context) -> list[onnx.NodeProto]:
    kind = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, bias, seq_lens, h0 = inputs[:6]
    c0, peep = (inputs[6], inputs[7]) if kind == "LSTM" else ("", "")
    layout = int(attrs.get("layout", 0))
    shape = context.shape(x)
    if shape is None or len(shape) != 3 or not all(isinstance(d, int) for d in shape[:2]):
        raise ValueError("sequence length not static")
    steps, batch = (shape[0], shape[1]) if layout == 0 else (shape[1], shape[0])
    if steps > MAX_STEPS or steps < 1:
        raise ValueError("too many steps")
    hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else None
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    lengths = context.constant(seq_lens) if seq_lens else None
    if seq_lens and (lengths is None or not np.all(lengths == steps)) and (direction != "forward"):
        raise ValueError("sequence_lens with a reverse direction")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(context.elem_type(x))
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    per_dir = len(DEFAULT_ACTIVATIONS[kind])
    acts = acts or DEFAULT_ACTIVATIONS[kind] * len(dirs)
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    clip = attrs.get("clip")
    gates = GATES[kind]

    b = _Builder(fresh)
    w_shape = context.shape(w)
    if hidden is None:
        if w_shape is None or not isinstance(w_shape[1], int):
            raise ValueError("hidden size unknown")
        hidden = w_shape[1] // gates
    seq_major = x if layout == 0 else b.op("Transpose", [x], perm=[1, 0, 2])
    if h0 and layout == 1:
        h0 = b.op("Transpose", [h0], perm=[1, 0, 2])
    if c0 and layout == 1:
        c0 = b.op("Transpose", [c0], perm=[1, 0, 2])
    mask = None
    if seq_lens and not (lengths is not None and np.all(lengths == steps)):
        lens = b.op("Cast", [seq_lens], to=onnx.TensorProto.INT64)
        mask = b.op("Unsqueeze", [lens, b.const(np.array([1], np.int64))])  # [batch, 1]

    def pick(tensor: str, index: int) -> str:
        return b.op("Gather", [tensor, b.const(np.array(index, np.int64))], axis=0)

    def split(tensor: str, parts: int) -> list[str]:
        outs = [fresh("part") for _ in range(parts)]
        if parts == 1:
            return [tensor]
        b.nodes.append(helper.make_node("Split", [tensor, b.const(np.array([hidden] * parts, np.int64))], outs,
                                        axis=-1))
        return outs

    zeros = np.zeros((batch, hidden), dtype)
    # constants every step reads, emitted once
    one = b.const(np.array(1, dtype)) if kind == "GRU" or attrs.get("input_forget", 0) else None
    pad = b.const(zeros, "pad") if mask is not None else None
    ys, last_h, last_c = [], [], []
    for d, backwards in enumerate(dirs):
        f_act = [acts[d * per_dir + i] for i in range(per_dir)]
        f_alpha = [alphas[d * per_dir + i] if d * per_dir + i < len(alphas) else None for i in range(per_dir)]
        f_beta = [betas[d * per_dir + i] if d * per_dir + i < len(betas) else None for i in range(per_dir)]

        def act(i: int, value: str) -> str:
            return _activation(b, f_act[i], value, f_alpha[i], f_beta[i], dtype)

        w_d, r_d = pick(w, d), pick(r, d)  # [gates * hidden, input], [gates * hidden, hidden]
        wb = rb = None
        if bias:  # [2 * gates * hidden]: the input's biases, then the hidden state's
            bias_d = pick(bias, d)
            wb, rb = (b.op("Slice", [bias_d, b.const(np.array([lo], np.int64)), b.const(np.array([hi], np.int64)),
                                     b.const(np.array([0], np.int64))])
                      for lo, hi in ((0, gates * hidden), (gates * hidden, 2 * gates * hidden)))
        h = pick(h0, d) if h0 else b.const(zeros, "h0")
        c = (pick(c0, d) if c0 else b.const(zeros, "c0")) if kind == "LSTM" else None
        peeps = split(pick(peep, d), 3) if peep else None  # i, o, f
        r_parts = split(b.op("Transpose", [r_d], perm=[1, 0]), gates) if kind == "GRU" else None
        rb_parts = split(rb, gates) if kind == "GRU" and rb else None
        outputs = [None] * steps
        for step in range(steps):
            t = steps - 1 - step if backwards else step
            x_t = pick(seq_major, t)  # [batch, input]
            xw = b.op("Gemm", [x_t, w_d] + ([wb] if wb else []), transB=1)
            if kind == "GRU":
                xz, xr, xh = split(xw, 3)
                hr = [b.op("MatMul", [h, part]) for part in r_parts]
                if rb_parts:
                    hr = [b.op("Add", [v, rb_parts[i]]) for i, v in enumerate(hr)]
                z = act(0, _clip(b, b.op("Add", [xz, hr[0]]), clip, dtype))
                rr = act(0, _clip(b, b.op("Add", [xr, hr[1]]), clip, dtype))
                if attrs.get("linear_before_reset", 0):
                    candidate = b.op("Add", [xh, b.op("Mul", [rr, hr[2]])])
                else:
                    reset_h = b.op("MatMul", [b.op("Mul", [rr, h]), r_parts[2]])
                    candidate = b.op("Add", [xh, b.op("Add", [reset_h, rb_parts[2]]) if rb_parts else reset_h])
                ht = act(1, _clip(b, candidate, clip, dtype))
                new_h = b.op("Add", [b.op("Mul", [b.op("Sub", [one, z]), ht]), b.op("Mul", [z, h])])
                new_c = None
            else:
                hw = b.op("Gemm", [h, r_d] + ([rb] if rb else []), transB=1)
                total = b.op("Add", [xw, hw])
                if kind == "RNN":
                    new_h, new_c = act(0, _clip(b, total, clip, dtype)), None
                else:
                    gi, go, gf, gc = split(total, 4)
                    if peeps:
                        gi = b.op("Add", [gi, b.op("Mul", [peeps[0], c])])
                        gf = b.op("Add", [gf, b.op("Mul", [peeps[2], c])])
                    i = act(0, _clip(b, gi, clip, dtype))
                    f = b.op("Sub", [one, i]) if attrs.get("input_forget", 0) \
                        else act(0, _clip(b, gf, clip, dtype))
                    candidate = act(1, _clip(b, gc, clip, dtype))
                    new_c = b.op("Add", [b.op("Mul", [f, c]), b.op("Mul", [i, candidate])])
                    if peeps:
                        go = b.op("Add", [go, b.op("Mul", [peeps[1], new_c])])
                    o = act(0, _clip(b, go, clip, dtype))
                    new_h = b.op("Mul", [o, act(2, new_c)])
            if mask is not None:
                running = b.op("Less", [b.const(np.array([[t]], np.int64)), mask])  # [batch, 1]
                out = b.op("Where", [running, new_h, pad])
                new_h = b.op("Where", [running, new_h, h])
                if new_c is not None:
                    new_c = b.op("Where", [running, new_c, c])
            else:
                out = new_h
            h, c = new_h, new_c if new_c is not None else c
            outputs[t] = b.op("Unsqueeze", [out, b.const(np.array([0], np.int64))])  # [1, batch, hidden]
        ys.append(b.op("Concat", outputs, axis=0) if steps > 1 else outputs[0])  # [steps, batch, hidden]
        last_h.append(h)
        last_c.append(c)
    outs = list(node.output) + [""] * (3 - len(node.output))
    axis0 = b.const(np.array([0], np.int64))
    if outs[0]:
        y = b.op("Concat", [b.op("Unsqueeze", [v, b.const(np.array([1], np.int64))]) for v in ys], axis=1) \
            if len(ys) > 1 else b.op("Unsqueeze", [ys[0], b.const(np.array([1], np.int64))])  # [steps, dirs, ...]
        b.op("Identity" if layout == 0 else "Transpose", [y], outs[0], **({} if layout == 0 else
                                                                          {"perm": [2, 0, 1, 3]}))
    for name, states in ((outs[1], last_h), (outs[2] if kind == "LSTM" else "", last_c)):
        if name:
            stacked = b.op("Concat", [b.op("Unsqueeze", [v, axis0]) for v in states], axis=0)
            b.op("Identity" if layout == 0 else "Transpose", [stacked], name, **({} if layout == 0 else
                                                                                 {"perm": [1, 0, 2]}))
    return b.nodes


def _clip(b: _Builder, x: str, clip: float | None, dtype) -> str:
    """X clipped to [-CLIP, CLIP] before a gate's activation, where the node sets clip."""
    if clip is None:
        return x
    return b.op("Clip", [x, b.const(np.array(-clip, dtype)), b.const(np.array(clip, dtype))])
