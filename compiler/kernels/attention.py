"""Attention (softmax(Q . K^T) . V) as one kernel, on AMX bf16 tiles or in float32, block of query rows by block:
the scores and probabilities of a block stay in the core's cache and never reach memory.

Unfused, attention is bound by memory: Whisper-tiny's encoder writes its 6 x 1500 x 1500 float32 scores (54 MB a
layer), softmax reads and writes them again, and P . V reads them once more; at the 8-14 GB/s two cores of this
machine get, that was 21 ms a layer of 27 in an int8 build. Here each parallel step takes ROW_TILES x 16 query rows
of one head:

    Q rows -> bf16 (zero past the last row and past D)                    [rows, Dp]      a few KB
    S = Q . K^T on AMX (tdpbf16ps), two 16-column panels at a time         [rows, Np]      float32, L2
    the padded columns of S set to the lowest float, then per row: max, exp (stored) and sum, P = exp / sum as bf16
    O = P . V on AMX                                                       [rows, Dv]      -> the output rows

K^T and V come packed by pack_keys / pack_values (kernels of their own, run once per call): the AMX weight
layout of compiler/kernels/dot_product.py with the tokens padded to whole 32-element chunks (Np), so the bf16
probabilities of the padded tokens are exact zeros. Q, K, P and V are rounded to bf16 (8 significant bits); the
sums are float32.

The float32 kernel (attention_kernel_fp32, for builds without bf16) has the same blocks, with both products in
register tiles of 8 rows x 32 columns of AVX-512 FMAs, reading K^T (tokens padded to a multiple of 32) and V as
they are.

In: float32 Q [..., M, D] (already scaled), the packed K^T and V (or K^T and V as they are), and the shapes.
Out: a scheduled PrimFunc attention(q, keys, values, out) with out [..., M, Dv] float32.
"""

from __future__ import annotations

import math

from tvm import te, tirx
from tvm.script import tirx as T

from ..tvmscript import quick_parse
from .dot_product import (A_TILES, AMX_CHUNK_GROUPS, B_TILES, BF16, C_TILES, LANES, MAX_TILE_ROWS, TILE_BYTES,
                          _round_up, amx_call, amx_depth, bf16_round, tile_register)
from .softmax import fast_exp

TILE_ROWS = MAX_TILE_ROWS  # rows per AMX tile
ROW_TILES = 2  # query rows per block: ROW_TILES x TILE_ROWS
CHUNK = AMX_CHUNK_GROUPS * BF16.group  # bf16 elements of the reduction per tile row (32)


def padded_tokens(tokens: int) -> int:
    """TOKENS padded to whole AMX chunks of bf16 (the packed K^T's columns and V's rows)."""
    return amx_depth(tokens, BF16.group)


def pack_keys(keys_t: te.Tensor, tokens: int) -> te.Tensor:
    """K^T [..., D, N'] (N' >= TOKENS; columns past TOKENS ignored) as bf16 bits in the AMX weight layout
    [batch, Np / 16, Dp / 2, 16, 2], zero-padded (batch: the leading dims flattened)."""
    *lead, depth, _ = (int(d) for d in keys_t.shape)
    return _pack(lambda index, k, n: keys_t[(*index, k, n)], lead, depth, tokens,
                 _round_up(depth, CHUNK), padded_tokens(tokens), "pack_keys")


def pack_values(values: te.Tensor) -> te.Tensor:
    """V [..., N, Dv] (Dv a multiple of 16) as bf16 bits in the AMX weight layout [batch, Dv / 16, Np / 2, 16, 2],
    its tokens zero-padded to Np."""
    *lead, tokens, width = (int(d) for d in values.shape)
    return _pack(lambda index, k, n: values[(*index, k, n)], lead, tokens, width, padded_tokens(tokens), width,
                 "pack_values")


def _pack(read, lead: list[int], depth: int, cols: int, depth_padded: int, cols_padded: int, name: str):
    """[batch, cols_padded / 16, depth_padded / 2, 16, 2] bf16 bits of READ(batch index, k, n) for k < DEPTH and
    n < COLS, zero elsewhere."""
    group = BF16.group

    def element(b, panel, k_outer, lane, k_inner):
        index, rest = [], b
        for extent in reversed(lead):
            index.insert(0, rest % extent)
            rest = rest // extent
        k, n = k_outer * group + k_inner, panel * LANES + lane
        value = read(index, tirx.min(k, depth - 1), tirx.min(n, cols - 1))
        inside = tirx.all(k < depth, n < cols)
        return bf16_round(tirx.if_then_else(inside, value, tirx.const(0, "float32")))

    shape = (math.prod(lead), cols_padded // LANES, depth_padded // group, LANES, group)
    return te.compute(shape, element, name=name)


def _exp_and_sum(tokens: int, width: int, lanes: int):
    """A TVMScript macro exp_and_sum(scores, acc, top, total, r) for one row R of a block's scores [rows, WIDTH]
    whose first TOKENS columns are real: the padded columns set to the lowest float (exp gives them 0), then
    scores[r] = exp(scores[r] - max) and total[0] = 1 / their sum (ACC: LANES vector accumulators)."""
    vectors = width // lanes
    lowest = T.float32(-3.4028234663852886e38)

    @T.macro
    def exp_and_sum(scores, acc, top, total, r):
        for c in range(tokens, width):
            scores[r, c] = lowest
        for j in T.vectorized(lanes):
            acc[j] = scores[r, j]
        for v in range(1, vectors):
            for j in T.vectorized(lanes):
                acc[j] = T.max(acc[j], scores[r, v * lanes + j])
        top[0] = lowest
        for j in range(lanes):
            top[0] = T.max(top[0], acc[j])
        for j in T.vectorized(lanes):
            acc[j] = T.float32(0)
        for v in range(vectors):
            for j in T.vectorized(lanes):
                scores[r, v * lanes + j] = fast_exp(scores[r, v * lanes + j] - top[0])
                acc[j] = acc[j] + scores[r, v * lanes + j]
        total[0] = T.float32(0)
        for j in range(lanes):
            total[0] = total[0] + acc[j]
        total[0] = T.float32(1) / total[0]

    return exp_and_sum


def attention_kernel(q_shape: list[int], tokens: int, value_width: int, lanes: int) -> tirx.PrimFunc:
    """attention(q, keys, values, out): the fused kernel of the module docstring for float32 Q of Q_SHAPE
    [..., M, D], TOKENS keys and values of VALUE_WIDTH (a multiple of 16) columns; LANES: the fp32 vector width."""
    *lead, rows, depth = q_shape
    with quick_parse():
        func = _kernel(math.prod(lead), rows, depth, tokens, value_width, lanes, q_shape)
    return func.with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})  # 8: kOpaque, never fused


def _kernel(batch: int, rows: int, depth: int, tokens: int, width: int, lanes: int, q_shape: list[int]):
    block_rows = TILE_ROWS * ROW_TILES
    blocks = -(-rows // block_rows)
    depth_p, tokens_p = _round_up(depth, CHUNK), padded_tokens(tokens)
    q_chunks, p_chunks = depth_p // CHUNK, tokens_p // CHUNK
    s_steps = tokens_p // (2 * LANES)
    o_pairs = 2 if width % (2 * LANES) == 0 else 1
    o_steps = width // (o_pairs * LANES)
    q_vectors = depth_p // lanes
    s_vectors = tokens_p // lanes
    out_shape = [*q_shape[:-1], width]
    group = BF16.group
    k_panel = (depth_p // group) * LANES * group  # elements of one packed K^T panel
    v_panel = (tokens_p // group) * LANES * group

    scores_at = _round_up(block_rows * depth_p * 2, 64)  # byte offsets in the scratch allocation
    p_at = scores_at + block_rows * tokens_p * 4
    o_at = p_at + _round_up(block_rows * tokens_p * 2, 64)
    config_at = o_at + block_rows * width * 4
    scratch_bytes = config_at + 64

    exp_and_sum = _exp_and_sum(tokens, tokens_p, lanes)

    call, tile = amx_call, tile_register

    @T.prim_func(private=True, s_tir=True)
    def attention(q_nd: T.Buffer(q_shape, "float32"),
                  keys: T.Buffer((batch, tokens_p // LANES, depth_p // group, LANES, group), "uint16"),
                  values: T.Buffer((batch, width // LANES, tokens_p // group, LANES, group), "uint16"),
                  out_nd: T.Buffer(out_shape, "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            q = T.decl_buffer((batch * rows, depth), "float32", data=q_nd.data)
            out = T.decl_buffer((batch * rows, width), "float32", data=out_nd.data)
            k_flat = T.decl_buffer((batch * tokens_p * depth_p,), "uint16", data=keys.data)
            v_flat = T.decl_buffer((batch * tokens_p * width,), "uint16", data=values.data)
            for task in T.parallel(batch * blocks):
                # one allocation, viewed as each buffer (TVM's StorageRewrite gave buffers of different types one
                # another's memory, and access_ptr then refused the type); the tiles get plain addresses
                scratch = T.decl_buffer((scratch_bytes,), "uint8", scope="global")
                q_bits = T.decl_buffer((block_rows, depth_p), "uint16", data=scratch.data, elem_offset=0)
                scores = T.decl_buffer((block_rows, tokens_p), "float32", data=scratch.data,
                                       elem_offset=scores_at // 4)
                p_bits = T.decl_buffer((block_rows, tokens_p), "uint16", data=scratch.data,
                                       elem_offset=p_at // 2)
                o_rows = T.decl_buffer((block_rows, width), "float32", data=scratch.data, elem_offset=o_at // 4)
                config = T.decl_buffer((64,), "uint8", data=scratch.data, elem_offset=config_at)
                top = T.decl_buffer((1,), "float32", scope="global")
                total = T.decl_buffer((1,), "float32", scope="global")
                acc = T.decl_buffer((lanes,), "float32", scope="global")
                b = task // blocks
                first = b * rows + task % blocks * block_rows  # the block's first row of q and out
                valid = T.min(rows - task % blocks * block_rows, block_rows)
                for r in range(block_rows):
                    for v in range(q_vectors):
                        for j in T.vectorized(lanes):
                            q_bits[r, v * lanes + j] = bf16_round(T.if_then_else(
                                r < valid and v * lanes + j < depth,
                                q[T.min(first + r, batch * rows - 1), T.min(v * lanes + j, depth - 1)],
                                T.float32(0)))
                for i in range(64):
                    config[i] = T.uint8(0)
                config[0] = T.uint8(1)  # palette 1: every tile 16 rows x 64 bytes
                for t in range(8):
                    config[16 + 2 * t] = T.uint8(TILE_BYTES)
                    config[48 + t] = T.uint8(TILE_ROWS)
                call("llvm.x86.ldtilecfg", T.address_of(config[0]))
                # S = Q . K^T, two 16-column panels a step
                for step in range(s_steps):
                    for i in T.unroll(ROW_TILES):
                        for j in T.unroll(2):
                            call("llvm.x86.tilezero", tile(C_TILES, i * 2 + j))
                    for k in range(q_chunks):
                        for i in T.unroll(ROW_TILES):
                            call("llvm.x86.tileloadd64", tile(A_TILES, i),
                                 T.address_of(q_bits[i * TILE_ROWS, k * CHUNK]),
                                 T.int64(depth_p * 2))
                        for j in T.unroll(2):
                            call("llvm.x86.tileloadd64", tile(B_TILES, j),
                                 T.address_of(k_flat[b * (tokens_p * depth_p) + (step * 2 + j) * k_panel
                                                   + k * TILE_ROWS * LANES * group]),
                                 T.int64(TILE_BYTES))
                        for i in T.unroll(ROW_TILES):
                            for j in T.unroll(2):
                                call("llvm.x86.tdpbf16ps", tile(C_TILES, i * 2 + j), tile(A_TILES, i),
                                     tile(B_TILES, j))
                    for i in T.unroll(ROW_TILES):
                        for j in T.unroll(2):
                            call("llvm.x86.tilestored64", tile(C_TILES, i * 2 + j),
                                 T.address_of(scores[i * TILE_ROWS, (step * 2 + j) * LANES]),
                                 T.int64(tokens_p * 4))
                for r in range(block_rows):
                    exp_and_sum(scores, acc, top, total, r)
                    for v in range(s_vectors):
                        for j in T.vectorized(lanes):
                            p_bits[r, v * lanes + j] = bf16_round(scores[r, v * lanes + j] * total[0])
                # O = P . V
                for step in range(o_steps):
                    for i in T.unroll(ROW_TILES):
                        for j in T.unroll(o_pairs):
                            call("llvm.x86.tilezero", tile(C_TILES, i * 2 + j))
                    for k in range(p_chunks):
                        for i in T.unroll(ROW_TILES):
                            call("llvm.x86.tileloadd64", tile(A_TILES, i),
                                 T.address_of(p_bits[i * TILE_ROWS, k * CHUNK]),
                                 T.int64(tokens_p * 2))
                        for j in T.unroll(o_pairs):
                            call("llvm.x86.tileloadd64", tile(B_TILES, j),
                                 T.address_of(v_flat[b * (tokens_p * width)
                                                   + (step * o_pairs + j) * v_panel
                                                   + k * TILE_ROWS * LANES * group]),
                                 T.int64(TILE_BYTES))
                        for i in T.unroll(ROW_TILES):
                            for j in T.unroll(o_pairs):
                                call("llvm.x86.tdpbf16ps", tile(C_TILES, i * 2 + j), tile(A_TILES, i),
                                     tile(B_TILES, j))
                    for i in T.unroll(ROW_TILES):
                        for j in T.unroll(o_pairs):
                            call("llvm.x86.tilestored64", tile(C_TILES, i * 2 + j),
                                 T.address_of(o_rows[i * TILE_ROWS, (step * o_pairs + j) * LANES]),
                                 T.int64(width * 4))
                call("llvm.x86.tilerelease")
                for r in range(valid):
                    for v in range(width // lanes):
                        for j in T.vectorized(lanes):
                            out[first + r, v * lanes + j] = o_rows[r, v * lanes + j]

    return attention


FP32_TILE_ROWS = 8  # query rows of a float32 register tile (x two 16-lane vectors: 16 accumulators)


def attention_kernel_fp32(q_shape: list[int], keys_width: int, tokens: int, value_width: int,
                          lanes: int) -> tirx.PrimFunc:
    """attention(q, kt, v, out) in float32 for CPUs without AMX tiles (and float32 builds): Q [..., M, D], K^T
    [..., D, KEYS_WIDTH] (tokens padded to a multiple of 32, which the padded columns' lowest-float scores
    cancel), V [..., TOKENS, VALUE_WIDTH] (a multiple of 16) read as they are, with the block structure of the
    bf16 kernel and register tiles of FP32_TILE_ROWS x 32 of AVX-512 FMAs for both products."""
    *lead, rows, depth = q_shape
    with quick_parse():
        func = _kernel_fp32(math.prod(lead), rows, depth, keys_width, tokens, value_width, lanes, q_shape)
    return func.with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def _kernel_fp32(batch: int, rows: int, depth: int, keys_width: int, tokens: int, width: int, lanes: int,
                 q_shape: list[int]):
    block_rows = TILE_ROWS * ROW_TILES
    blocks = -(-rows // block_rows)
    tile_rows, pair = FP32_TILE_ROWS, 2 * lanes
    s_steps = keys_width // pair
    o_pairs = 2 if width % pair == 0 else 1
    o_steps, o_cols = width // (o_pairs * lanes), o_pairs * lanes
    s_vectors = keys_width // lanes
    out_shape = [*q_shape[:-1], width]
    kt_shape = [*q_shape[:-2], depth, keys_width]
    v_shape = [*q_shape[:-2], tokens, width]
    exp_and_sum = _exp_and_sum(tokens, keys_width, lanes)

    @T.prim_func(private=True, s_tir=True)
    def attention(q_nd: T.Buffer(q_shape, "float32"), kt_nd: T.Buffer(kt_shape, "float32"),
                  v_nd: T.Buffer(v_shape, "float32"), out_nd: T.Buffer(out_shape, "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            q = T.decl_buffer((batch * rows, depth), "float32", data=q_nd.data)
            kt = T.decl_buffer((batch * depth, keys_width), "float32", data=kt_nd.data)
            v = T.decl_buffer((batch * tokens, width), "float32", data=v_nd.data)
            out = T.decl_buffer((batch * rows, width), "float32", data=out_nd.data)
            for task in T.parallel(batch * blocks):
                scores = T.decl_buffer((block_rows, keys_width), "float32", scope="global")
                tile = T.decl_buffer((tile_rows, pair), "float32", scope="global")
                top = T.decl_buffer((1,), "float32", scope="global")
                total = T.decl_buffer((1,), "float32", scope="global")
                acc = T.decl_buffer((lanes,), "float32", scope="global")
                b = task // blocks
                first = b * rows + task % blocks * block_rows
                valid = T.min(rows - task % blocks * block_rows, block_rows)
                # S = Q . K^T in register tiles (rows past the last read the last row; they are never written)
                for rt in range(block_rows // tile_rows):
                    for step in range(s_steps):
                        for i in T.unroll(tile_rows):
                            for j in T.vectorized(pair):
                                tile[i, j] = T.float32(0)
                        for d in range(depth):
                            for i in T.unroll(tile_rows):
                                for j in T.vectorized(pair):
                                    tile[i, j] = tile[i, j] + q[T.min(first + rt * tile_rows + i, batch * rows - 1),
                                                                d] * kt[b * depth + d, step * pair + j]
                        for i in T.unroll(tile_rows):
                            for j in T.vectorized(pair):
                                scores[rt * tile_rows + i, step * pair + j] = tile[i, j]
                for r in range(block_rows):
                    exp_and_sum(scores, acc, top, total, r)
                    for vv in range(s_vectors):
                        for j in T.vectorized(lanes):
                            scores[r, vv * lanes + j] = scores[r, vv * lanes + j] * total[0]
                # O = P . V over the real tokens, written straight to the output rows
                for rt in range(block_rows // tile_rows):
                    for step in range(o_steps):
                        for i in T.unroll(tile_rows):
                            for j in T.vectorized(o_cols):
                                tile[i, j] = T.float32(0)
                        for c in range(tokens):
                            for i in T.unroll(tile_rows):
                                for j in T.vectorized(o_cols):
                                    tile[i, j] = tile[i, j] + scores[rt * tile_rows + i, c] * v[
                                        b * tokens + c, step * o_cols + j]
                        for i in T.unroll(tile_rows):
                            if rt * tile_rows + i < valid:
                                for j in T.vectorized(o_cols):
                                    out[first + rt * tile_rows + i, step * o_cols + j] = tile[i, j]

    return attention
