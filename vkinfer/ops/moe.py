"""ZAYA's top-1 MoE: the router after its down projection (bias, EDA, norm, MLP, softmax and
the biased top-1 in one kernel), and the output (zaya1.md §3.3 steps 7-8): the chosen expert's
output scaled by its router probability, with the skip slot's behaviour, all read on the GPU
(no host round trip for the expert choice); and a prompt chunk's tokens grouped by expert for
matmul_id's CPU kernel (expert_tiles)."""
from math import ceil, erf

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, output, require
from ..gpu.weights import as_weight

ROUTER_MAX = 256         # router width and slot count shaders/router.comp holds in shared memory
ROUTER_ROWS = 4          # token rows per router work group


def router(g: Graph, r: Tensor, b_in: Tensor, prev: Tensor | None, eda: Tensor | None,
           norm_w: Tensor, W, b1: Tensor, b2: Tensor, biases: Tensor, eps: float = 1e-5,
           probs: Tensor | None = None, expert_ids: Tensor | None = None) -> tuple:
    """ZAYA's router from its down projection r f32 [T, R] (zaya1.md §3.3 steps 1-6), one work
    group per row: r += b_in (+ prev * eda, the previous MoE block's router state) in place;
    z = rms_norm(r) * norm_w; z = gelu(W1 z + b1); z = gelu(W2 z + b2); probs = softmax(W4 z);
    expert_ids = argmax(probs + biases). W is W1 [R, R], W2 [R, R] and W4 [E + 1, R] stacked
    in one buffer (a Weight of one part, [2R + E + 1, R]). Returns (probs [T, E + 1] f32,
    expert_ids [T] u32)."""
    op = "router"
    check_tensor(op, "r", r, dtype="f32")
    require(r.ndim == 2 and r.numel > 0, f"{op}: r has shape {r.shape}, expected [T, R]")
    T, R = r.shape
    W = as_weight(W)
    n_slots = W.shape[0] - 2 * R
    require(len(W.parts) == 1 and W.shape[1] == R and n_slots >= 1,
            f"{op}: W {W} must be one part of [2 x {R} + slots, {R}] (W1, W2, W4 stacked)")
    require(R % 4 == 0 and R <= ROUTER_MAX and n_slots <= ROUTER_MAX,
            f"{op}: router width {R} and {n_slots} slots must be at most {ROUTER_MAX}, width a multiple of 4")
    for name, t, n in (("b_in", b_in, R), ("norm_w", norm_w, R), ("b1", b1, R), ("b2", b2, R),
                       ("biases", biases, n_slots)):
        check_tensor(op, name, t, dtype="f32", shape=(n,))
    require((prev is None) == (eda is None), f"{op}: prev and eda go together")
    if prev is not None:
        check_tensor(op, "prev", prev, dtype="f32", shape=(T, R))
        check_tensor(op, "eda", eda, dtype="f32", shape=(R,))
    probs = output(g, op, probs, (T, n_slots))
    expert_ids = output(g, op, expert_ids, (T,), "u32")
    w = W.parts[0][1]
    p_t, e_t = (prev, eda) if prev is not None else (b_in, b_in)     # unread when there is no EDA
    g.dispatch(f"router.{W.dtype}", [w, b_in, p_t, e_t, norm_w, b1, b2, biases], [r, probs, expert_ids],
               [T, R, n_slots, int(prev is not None), float(eps), w.offset, b_in.offset, p_t.offset,
                e_t.offset, norm_w.offset, b1.offset, b2.offset, biases.offset, r.offset,
                probs.offset, expert_ids.offset], groups=ceil(T / ROUTER_ROWS))
    return probs, expert_ids


def router_ref(r, b_in, prev, eda, norm_w, W1, W2, W4, b1, b2, biases, eps: float = 1e-5) -> tuple:
    """(r after the bias and EDA, probs, expert_ids) as router computes them."""
    r = np.asarray(r, np.float64) + b_in
    if prev is not None:
        r = r + np.asarray(prev, np.float64) * eda
    z = r / np.sqrt(np.mean(r * r, axis=-1, keepdims=True) + eps) * norm_w
    gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + erf(v / np.sqrt(2.0))))
    z = gelu(z @ np.asarray(W1, np.float64).T + b1)
    z = gelu(z @ np.asarray(W2, np.float64).T + b2)
    logits = z @ np.asarray(W4, np.float64).T
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    ids = np.argmax(probs + biases, axis=-1).astype(np.uint32)
    return r.astype(np.float32), probs, ids

WG = 256
SKIP_OUTPUTS = ("zero", "identity")


def moe_combine(g: Graph, h: Tensor, probs: Tensor, expert_ids: Tensor, skip: str = "zero",
                x: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """out[t] = h[t] * probs[t, e_t] for e_t = expert_ids[t] < E, where probs is f32 [T, E + 1]
    and slot E is the skip slot. A token with e_t >= E gets 0 (skip="zero") or
    x[t] * probs[t, E] (skip="identity", x [T, n] the MoE input). out may be h."""
    op = "moe_combine"
    require(skip in SKIP_OUTPUTS, f"{op}: skip={skip!r} is not one of {', '.join(SKIP_OUTPUTS)}")
    check_tensor(op, "h", h, dtype="f32")
    require(h.ndim == 2 and h.shape[0] >= 1, f"{op}: h has shape {h.shape}, expected [T, n]")
    T, n = h.shape
    check_tensor(op, "probs", probs, dtype="f32", shape=(T, None))
    require(probs.shape[1] >= 2, f"{op}: probs has {probs.shape[1]} slots; expected experts + skip")
    check_tensor(op, "expert_ids", expert_ids, dtype="u32", shape=(T,))
    ins = [h, probs, expert_ids]
    if skip == "identity":
        require(x is not None, f"{op}: skip='identity' needs the MoE input x")
        check_tensor(op, "x", x, dtype="f32", shape=(T, n))
        ins.append(x)
    else:
        require(x is None, f"{op}: x is only used with skip='identity'")
    if out is None:
        out = g.dev.empty((T, n), "f32")
    else:
        check_tensor(op, "out", out, dtype="f32", shape=(T, n))
    g.dispatch(f"moe.{skip}", ins, [out],
               [T * n, n, probs.shape[1] - 1, h.offset, probs.offset, expert_ids.offset,
                x.offset if x is not None else 0, out.offset], groups=ceil(T * n / WG))
    return out


def moe_combine_ref(h, probs, expert_ids, skip="zero", x=None):
    E = probs.shape[1] - 1
    slots = np.minimum(np.asarray(expert_ids, np.int64), E)
    prob = probs[np.arange(len(slots)), slots][:, None]
    out = h * prob
    skipped = slots == E
    out[skipped] = x[skipped] * prob[skipped] if skip == "identity" else 0.0
    return out.astype(np.float32)


# ---- a prompt chunk's tokens grouped by expert (matmul_id's grouped LANE kernel) ----------------
TILE_SIZES = (4, 8)      # tokens per tile: shaders/moe.comp takes either, idlanemat4/8 read them
NO_TILE = 0xFFFFFFFF
# The table's one invocation runs about 3.1 T + 19 S loop iterations for T tokens over S slots
# (8-token tiles; 4-token ones add T / 8), and llvmpipe ends an invocation silently after 65535;
# S is also its shared arrays' size.
MAX_TILED_TOKENS, MAX_SLOTS = 8192, 1024


def tile_tokens(n_tokens: int, n_experts: int) -> int:
    """Tokens per tile for a chunk of n_tokens over n_experts: the LANE kernel computes every
    place of a tile, and below 4 tokens per expert on average most of an 8-token tile is padding
    (issue 16's eleventh sitting in bench/RESULTS.md)."""
    return 4 if n_tokens < 4 * n_experts else 8


def table_shape(n_tokens: int, n_experts: int, tile: int) -> tuple:
    """(tiles, words per tile) of a table of n_tokens over n_experts experts and the skip slot:
    every slot leaves at most one short tile; a tile is (slot, n, tokens...)."""
    return ceil(n_tokens / tile) + n_experts + 1, 2 + tile


def table_words(n_tokens: int, n_experts: int) -> int:
    """Words a buffer needs for the table of up to n_tokens, whatever the tile size."""
    return max(a * b for a, b in (table_shape(n_tokens, n_experts, t) for t in TILE_SIZES))


def expert_tiles(g: Graph, expert_ids: Tensor, n_experts: int, tile: int | None = None,
                 out: Tensor | None = None) -> Tensor:
    """The tokens of expert_ids u32 [T] grouped by expert, `tile` at a time (by default
    tile_tokens(T, E)): u32 table_shape(T, E, tile), tile k = (slot, n, tokens...), the slots in
    order (experts 0 .. E - 1, then E for every id >= E, the skip slot), a short tile padded with
    its last token, unused tiles (NO_TILE, 0, 0...). One dispatch of one invocation
    (shaders/moe.comp)."""
    op = "expert_tiles"
    check_tensor(op, "expert_ids", expert_ids, dtype="u32")
    require(expert_ids.ndim == 1 and expert_ids.shape[0] >= 1, f"{op}: expert_ids has shape {expert_ids.shape}")
    T = expert_ids.shape[0]
    require(1 <= n_experts < MAX_SLOTS, f"{op}: n_experts = {n_experts}; at most {MAX_SLOTS - 1}")
    require(T <= MAX_TILED_TOKENS, f"{op}: {T} tokens; at most {MAX_TILED_TOKENS}")
    tile = tile_tokens(T, n_experts) if tile is None else tile
    require(tile in TILE_SIZES, f"{op}: tiles of {tile} tokens; {' or '.join(map(str, TILE_SIZES))}")
    out = output(g, op, out, table_shape(T, n_experts, tile), "u32")
    g.dispatch("moe.tiles", [expert_ids], [out], [T, n_experts, expert_ids.offset, out.offset, out.shape[0], tile])
    return out


def expert_tiles_ref(expert_ids, n_experts: int, tile: int) -> np.ndarray:
    slots = np.minimum(np.asarray(expert_ids, np.int64), n_experts)
    n, words = table_shape(len(slots), n_experts, tile)
    table = [[NO_TILE] + [0] * (words - 1) for _ in range(n)]
    k = 0
    for slot in range(n_experts + 1):
        tokens = np.flatnonzero(slots == slot).tolist()
        for at in range(0, len(tokens), tile):
            part = tokens[at:at + tile]
            table[k] = [slot, len(part)] + part + [part[-1]] * (tile - len(part))
            k += 1
    return np.array(table, np.uint32)
