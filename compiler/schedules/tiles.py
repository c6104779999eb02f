"""Register-tile sizes of the contraction schedules: plain arithmetic on extents and vector widths (no TIR), each
choice with the measurement that set it. Contraction (compiler/schedules/contraction.py) and RowStrips use them.
"""

from __future__ import annotations

from .common import vector_factor, vector_factors

MAX_ACCUMULATORS = 24  # of the 32 vector registers of AVX-512 (12 of 16 on AVX2: see register_tile)
ALIASED_ROW_LIMIT = 8  # rows whose operand lines share cache sets (4 KB apart); the L1 is 8-12-way
MAX_TILE_VECTORS = 12  # most vectors one tile spans (streaming tiles, several narrower vectors or panels)
SINGLE_ROW_VECTORS = 4  # vectors of a one-row tile (matrix-vector products): accumulators to hide the FMA latency
SINGLE_ROW_TASKS = 16  # column tasks a one-row tile keeps at least, for the threads


def group_widths(group: int, lanes: int) -> list[int]:
    """Vector widths for a grouped convolution with GROUP output channels per group, widest first:
    vector_factors', and where those are all under half a vector, also the widest divisor of GROUP within one
    vector. ShuffleNet's 240 -> 60 convolution in 3 groups of 20 (at 28x28) ran 0.071 ms with 10 lanes and 0.239
    with 4; with groups of 40, 10 lanes (0.134 ms) lost to 8 (0.115)."""
    widths = vector_factors(group, lanes)
    if widths[0] >= lanes // 2:
        return widths
    widest = max(d for d in range(1, lanes + 1) if group % d == 0)
    return [widest] + widths if widest > widths[0] else widths


def register_tile(rows: int | None, cols: int, lanes: int, group: int | None = None,
                  aliased_rows: bool = False, wide: bool = False, panels: bool = False) -> tuple[int, int]:
    """(row tile, vector width) of the register tile: the pair with the most accumulators that fits the vector
    registers, more rows on a tie; exact divisors of ROWS first, a guarded tile (last one partly empty) only when
    no divisor of 4 or more fits. Measured: SqueezeNet's 169x1000 classifier ran 13 x 8 in 0.98 ms, 8 x 8 guarded
    in 2.2 ms, 1 x 40 in 6.2 ms; ResNet-18 with 14 x 16 tiles at 28x28 and 14x14 in 22.5 ms, with 7 x 32 in 25.9.
    ALIASED_ROWS (the rows of the broadcast operand lie a multiple of 4 KB apart, so they share cache sets) caps
    the tile at 8 rows: a 128x1024x256 matmul ran 8 x 32 at 223 GFLOP/s and 16 x 16 at 108. With GROUP (a
    grouped convolution's channels per group) the vector width divides it, so a vector never spans two groups.
    WIDE (weights packed in panels, kiln.PackWeights) breaks ties towards wider vectors: a 3x3 256-channel
    convolution at 14x14 ran 7 x 32 in 0.76 ms and 14 x 16 in 0.89; a 128x768x768 matmul 8 x 32 in 0.56 ms and
    16 x 16 in 0.60. PANELS: GROUP is a weight panel (kiln.PackWeights), not a channel group, and the tile may
    span several panels (the first convolution of a row strip, see RowStrips)."""
    budget = MAX_ACCUMULATORS if lanes >= 16 else 12
    widths = group_widths(group, lanes) if group else vector_factors(cols, lanes)
    if rows == 1:
        return 1, single_row_width(cols, widths[0])
    if group and panels:  # several panels, while the accumulators still allow 4 rows
        widths = [k * group for k in range(MAX_TILE_VECTORS, 1, -1)
                  if cols % (k * group) == 0 and 4 * k * group <= budget * lanes] + widths
    elif not group and cols % lanes:  # no whole vector divides the axis: also several narrower ones (tile_lanes)
        widths = [k * widths[0] for k in range(MAX_TILE_VECTORS, 1, -1) if cols % (k * widths[0]) == 0] + widths
    best = (0.0, 0, 1, widths[0])  # (accumulated outputs, tie-break, rows, vector width)
    for vf in widths:
        limit = max(1, budget // -(-vf // min(tile_lanes(vf, lanes), lanes)))  # rows of vf's vector registers
        if aliased_rows:
            limit = min(limit, ALIASED_ROW_LIMIT)
        if rows is None:
            best = max(best, (float(vf), vf, 1, vf))
            continue
        exact = max((d for d in range(1, min(rows, limit) + 1) if rows % d == 0), default=1)
        best = max(best, (float(exact * vf), vf if wide else exact, exact, vf))
        if exact < 4 and rows > limit:
            guarded = min(8, limit)
            best = max(best, (0.5 * guarded * vf, vf if wide else guarded, guarded, vf))
    return best[2], best[3]


ROW_PADDING = 8  # rows a matmul with no usable row tile is padded to a multiple of (kiln.PadRows)


def needs_row_padding(rows: int) -> bool:
    """Whether a contraction over ROWS rows gets only a guarded register tile (register_tile: no divisor of 4 to
    12 rows; 197 ViT tokens, 13, 19, ...). The guard on every row of the tile kept LLVM from keeping the
    accumulators in registers: ViT-B/16's 197 x 768 -> 2304 projection ran 2,150 ms, so such rows are padded
    to a multiple of ROW_PADDING instead (kiln.PadRows) and the extra rows sliced off."""
    return rows > 12 and max(d for d in range(1, 13) if rows % d == 0) < 4


def single_row_width(cols: int, base: int) -> int:
    """Width of a one-row register tile (a matrix-vector product: one accumulator per vector) in vectors of BASE
    columns: up to SINGLE_ROW_VECTORS of them, so as many accumulators hide the FMA latency, while COLS still
    splits into SINGLE_ROW_TASKS tasks. ShuffleNet's 960 -> 1000 classifier (1008 packed columns) ran 63.8 us
    with 1 x 16, 51.5 with 1 x 48, 53.1 with 1 x 112, 55.4 with 1 x 144 (alone, warm, 2 threads; ONNX Runtime
    37)."""
    return max(k * base for k in range(1, SINGLE_ROW_VECTORS + 1)
               if cols % (k * base) == 0 and (k == 1 or cols // (k * base) >= SINGLE_ROW_TASKS))


def tile_lanes(width: int, lanes: int) -> int:
    """The vector width a register tile of WIDTH columns is computed in: WIDTH itself where it is a power of two
    (LLVM vectorizes it well), else the widest power of two dividing it (vector_factor), as several vectors.
    MobileNetV2's 56x56 96 -> 24 convolution ran 0.087 ms with 8 x (3 x 8) tiles, 0.105 with 14 x 8; its
    144 -> 24 one 0.113 against 0.156 (2 threads, warm)."""
    return width if width & (width - 1) == 0 else vector_factor(width, lanes)


def streaming_tile(rows: int, cols: int, lanes: int) -> tuple[int, int] | None:
    """(rows, vectors of LANES) of the register tile of a memory-bound kernel (see STREAMING_BYTES): as many
    vectors of channels as divide COLS up to MAX_TILE_VECTORS, then as many rows as the accumulators allow. Each
    task then reads and writes whole runs of each pixel's channels, which the prefetchers follow, instead of one
    64-byte line per pixel: MobileNetV2's 56x56x144 depthwise convolution ran 0.19 ms in the model with 2 x 9
    vectors against 0.32 with 14 x 1 (2 threads, medians). None when COLS is two vectors or fewer (the usual
    tile is as wide already)."""
    if cols % lanes or cols <= 2 * lanes:
        return None
    vectors = max(d for d in range(1, MAX_TILE_VECTORS + 1) if (cols // lanes) % d == 0)
    return max(d for d in range(1, max(1, MAX_ACCUMULATORS // vectors) + 1) if rows % d == 0), vectors


def few_terms_tile(rows: int, cols: int, lanes: int) -> tuple[int, int] | None:
    """(rows, width) of the register tile of a kernel with few terms per output (a depthwise convolution) that
    does not stream (see streaming_tile): two vectors of channels, so each pixel read is two adjacent lines, over
    at most 7 rows. MobileNetV2's 3x3 depthwise convolutions, alone (2 threads): 28x28x192 ran 45 us with 7 x 32
    against 57 with 14 x 16; 112x112x32 150-183 us against 208-249 with 16 x 16 (and 203-211 with 8 x 32);
    14x14x384, 14x14x576 and 7x7x960 the same either way. None when COLS is not a multiple of two vectors."""
    if cols % (2 * lanes):
        return None
    return max(d for d in range(1, 8) if rows % d == 0), 2 * lanes


TRANSPOSED_ROWS = (16, 8)  # pixels of a tile written out transposed: 64- or 32-byte runs of each channel's row


def transposed_rows(rows: int, width: int, lanes: int) -> int | None:
    """Rows of a register tile whose epilogue writes the output transposed (NHWC computed, NCHW written:
    kiln.FuseBorderTransposes): the tile's rows become the contiguous runs of the output, so as many as the
    accumulators of WIDTH columns allow, 16 or 8 dividing ROWS; None where neither fits."""
    budget = MAX_ACCUMULATORS // max(1, -(-width // lanes))
    return next((d for d in TRANSPOSED_ROWS if d <= budget and rows % d == 0), None)

