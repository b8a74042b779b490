"""Matrix products with weights of every type (F32, F16, BF16 and the GGUF block types): y = W @ x
for each token, W numpy-style [out, in] (GGUF ne0 = in), and the MoE gather-matmul where each
token uses its own expert. Weights are decoded in the shader (shaders/include/weights.glsl, from
the device layouts of vkinfer/gpu/tensor.py); sums are F32. matmul can take an RMS norm of x
(with its weight) into the same dispatch."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, output, require
from ..gpu.weights import check_weight
from . import moe
from .norm import rms_norm_ref

VEC_ROWS = 4                       # rows per work group of the vector kernels (ROWS_PER_GROUP)
TILE_ROWS, TILE_TOKENS = 32, 16   # output tile of the batched kernel



def _check_x(op: str, x: Tensor, n_in: int) -> int:
    check_tensor(op, "x", x, dtype="f32", shape=(None, n_in))
    require(x.shape[0] >= 1, f"{op}: x has no tokens")
    return x.shape[0]


SHORT_ROW = 256       # rows up to this long get one thread each (no reduction)


def _vec(g: Graph, n_in: int, kind: str = "vec") -> tuple:
    """(variant prefix, rows per work group, spec constants) of the vector kernel: one thread
    per row for short rows; else the subgroup-sum one where the device has it (one row per
    expected subgroup of 64 threads); else 32 threads per row summed in shared memory."""
    if n_in <= SHORT_ROW:
        return kind + "row", 64, ()
    if g.dev.subgroup_arithmetic:
        rows = max(1, 64 // max(g.dev.info.subgroup_size, 1))
        return kind + "sg", rows, (rows,)
    return kind, VEC_ROWS, ()


# The LANE kernels' tiles (shaders/matmul.comp): invocations per group; rows x tokens per
# invocation for one token (lane_*, idlane_*) and for many (lanemat_*).
LANE_THREADS, LANE_VEC_ROWS, LANE_MAT_ROWS, LANE_TOKENS = 8, 8, 16, 8
# Alignment (in elements) the LANE kernels' wide loads need of a plain weight's rows.
LANE_ALIGN = {"f32": 4, "f16": 8}
# Types with a wide chunk load (weights.glsl weight_chunk) also get the LANE prompt kernel; for
# the others its 16 x 8 tile of inlined weight4 decoding takes LLVM 20-40 s to compile.
LANE_MAT_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def _lane(g: Graph, W, x: Tensor, n: int, batched: bool) -> bool:
    """Whether the LANE kernels run this product: on a CPU device, with x in whole vec4s,
    weight rows aligned for their wide loads, and for a tile of many tokens (`batched`) a
    type in LANE_MAT_TYPES."""
    n_in = W.shape[-1]
    align = LANE_ALIGN.get(W.dtype, 1)
    return (g.dev.lane_kernels and x.offset % 4 == 0 and (n == 1 or n_in % 4 == 0)
            and (not batched or W.dtype in LANE_MAT_TYPES)
            and n_in % align == 0 and all(part.offset % align == 0 for _, part in W.parts))


# Elements a block type's Head (its scales, loaded once per span) serves: 8 chunks of 32.
HEAD_SPAN = 256


def _lane_spec(g: Graph, norm: bool, n_in: int, part: Tensor) -> tuple:
    """The LANE kernels' specialization constants: (unused, NORM_IN, SHARE, HEADS_ALIGNED), the
    last 1 where every row of `part` starts a span of its Head (shaders/matmul.comp)."""
    aligned = n_in % HEAD_SPAN == 0 and part.offset % HEAD_SPAN == 0
    return (0, int(norm), g.dev.load_share, int(aligned))


def matmul(g: Graph, W, x: Tensor, out: Tensor | None = None, accumulate: bool = False,
           norm: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """out[n] = W @ x[n] for W [out, in] (a Weight or a Tensor), x f32 [N, in]; out f32
    [N, out], contiguous (it may sit at an offset inside a bigger buffer); with `accumulate`,
    out[n] += W @ x[n] (a residual add in the same dispatch). With `norm` (f32 [in], an RMS
    norm's weight), x[n] is first normalized: out[n] = W @ rms_norm(x[n], norm, eps), in the
    same dispatch. N = 1 runs the vector kernel, N > 1 the tiled one; a split weight is one
    dispatch per part (each computes the norm again)."""
    W = check_weight("matmul", W, 2)
    n_out, n_in = W.shape
    n = _check_x("matmul", x, n_in)
    if norm is not None:
        check_tensor("matmul", "norm", norm, dtype="f32", shape=(n_in,))
    require(out is not None or not accumulate, "matmul: accumulate needs an out tensor")
    out = output(g, "matmul", out, (n, n_out))
    require(out.buf is not x.buf, "matmul: out must not share x's buffer")
    require(norm is None or out.buf is not norm.buf, "matmul: out must not share norm's buffer")
    nw = x if norm is None else norm        # binding 2 either way; NORM_IN says whether it is read
    vec, per_group, vec_spec = _vec(g, n_in)
    lane = _lane(g, W, x, n, batched=n > 1) and nw.offset % 4 == 0
    spec = ()
    if norm is not None:    # spec constant 1 is NORM_IN; constant 0 counts only in the subgroup kernel
        vec_spec, spec = (vec_spec[0] if vec_spec else 0, 1), (0, 1)
    for start, part in W.parts:
        rows = part.shape[0]
        push = [part.offset, rows, n_in, x.offset, n, out.offset, n_out, start, int(accumulate),
                nw.offset, float(eps)]
        if lane:
            kernel, tile_rows, tokens = (("lane", LANE_VEC_ROWS, 1) if n == 1 else
                                         ("lanemat", LANE_MAT_ROWS, LANE_TOKENS))
            g.dispatch(f"matmul.{kernel}_{W.dtype}", [part, x, nw], [out], push,
                       groups=ceil(rows / (tile_rows * LANE_THREADS)) * ceil(n / tokens),
                       spec=_lane_spec(g, norm is not None, n_in, part))
        elif n == 1:
            g.dispatch(f"matmul.{vec}_{W.dtype}", [part, x, nw], [out], push,
                       groups=ceil(rows / per_group), spec=vec_spec)
        else:
            groups = ceil(rows / TILE_ROWS) * ceil(n / TILE_TOKENS)
            g.dispatch(f"matmul.mat_{W.dtype}", [part, x, nw], [out], push, groups=groups, spec=spec)
    return out


def matmul_id(g: Graph, W_experts, x: Tensor, expert_ids: Tensor, out: Tensor | None = None,
              tiles: Tensor | None = None) -> Tensor:
    """out[n] = W_experts[expert_ids[n]] @ x[n], the ids read on the GPU; an id >= E (the
    skip slot) gives a row of zeros. W_experts [E, out, in] is one tensor or a Weight split
    by experts; expert_ids u32 [N] (it may live in a host buffer). On a GPU one token runs the
    vector kernel and more the grouped one (idmat): a work group per expert (and one for the
    skip slot) and tile of rows takes the tokens that chose its expert a tile at a time, so a
    prompt chunk reads each chosen expert once per tile of its tokens, not once per token. On a
    CPU device every token has its own groups (idlane), unless `tiles` (moe.expert_tiles of
    these ids, where lane_grouped says so) gives each group one expert's tile of 4 or 8 tokens
    (idlanemat4/8): grouping pays on llvmpipe from about 1.5 tokens per expert (bench/RESULTS.md)."""
    W = check_weight("matmul_id", W_experts, 3)
    n_experts, n_out, n_in = W.shape
    n = _check_x("matmul_id", x, n_in)
    check_tensor("matmul_id", "expert_ids", expert_ids, dtype="u32", shape=(n,))
    out = output(g, "matmul_id", out, (n, n_out))
    ids, slots = expert_ids, n       # slots: work groups per tile of rows of a part
    if _lane(g, W, x, n, batched=False):
        if tiles is not None and W.dtype in LANE_MAT_TYPES:
            tile = tiles.shape[-1] - 2
            require(tile in moe.TILE_SIZES, f"matmul_id: tiles has shape {tiles.shape}")
            check_tensor("matmul_id", "tiles", tiles, dtype="u32", shape=moe.table_shape(n, n_experts, tile))
            kernel, per_group, ids, slots = f"idlanemat{tile}", LANE_MAT_ROWS * LANE_THREADS, tiles, tiles.shape[0]
        else:
            kernel, per_group = "idlane", LANE_VEC_ROWS * LANE_THREADS
        spec = None                 # per part
    elif n == 1:
        kernel, per_group, spec = _vec(g, n_in, "id")
    else:
        kernel, per_group, spec, slots = "idmat", TILE_ROWS, (), None   # the part's experts, the skip slot
    for start, part in W.parts:
        e_count = part.shape[0]
        push = [part.offset, n_out, n_in, x.offset, n, out.offset, n_out, 0, 0,
                ids.offset, start, e_count, n_experts]
        g.dispatch(f"matmul.{kernel}_{W.dtype}", [part, x, ids], [out], push,
                   groups=(e_count + 1 if slots is None else slots) * ceil(n_out / per_group),
                   spec=_lane_spec(g, False, n_in, part) if spec is None else spec)
    return out


def lane_grouped(g: Graph, n_tokens: int, n_experts: int) -> bool:
    """Whether matmul_id on this device wants moe.expert_tiles for n_tokens over n_experts: on a
    CPU device from 1.5 tokens per expert on average (with 4-token tiles; with 1 a group per
    token ran as fast or faster; issue 16's eleventh sitting in bench/RESULTS.md), up to the
    table's bounds."""
    return (g.dev.lane_kernels and 3 * n_experts <= 2 * n_tokens <= 2 * moe.MAX_TILED_TOKENS
            and n_experts < moe.MAX_SLOTS)


# ---- numpy twins (weights as float32 after decoding) --------------------------------------------
def matmul_ref(W: np.ndarray, x: np.ndarray, norm: np.ndarray | None = None,
               eps: float = 1e-5) -> np.ndarray:
    """W @ x[n], or with `norm` W @ rms_norm(x[n], norm, eps)."""
    if norm is not None:
        x = rms_norm_ref(x, norm, eps)
    return (x.astype(np.float64) @ W.astype(np.float64).T).astype(np.float32)


def matmul_id_ref(W_experts: np.ndarray, x: np.ndarray, expert_ids: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], W_experts.shape[1]), np.float32)
    for n, e in enumerate(expert_ids):
        if e < W_experts.shape[0]:
            out[n] = matmul_ref(W_experts[e], x[n:n + 1])[0]
    return out
