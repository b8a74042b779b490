"""Attention-side ops (ZAYA1 CCA, zaya1.md §3.2 steps 5-9): the L2 head norm's twin (the model's
norm runs inside cca.cca_qkv), partial NEOX RoPE (rope.glsl, also in cca_qkv), the KV-cache store and causal GQA attention with an online softmax. Tokens are rows: x, q, k
and v are [T, heads, dim]; caches are [n_ctx, kv_heads, dim] (one sequence) or parts of the slot
pool [n_part_slots, n_ctx, kv_heads, dim], F32 or F16 (halves packed two to a word). Each token
row has a position and a slot (u32 tensors read on the GPU, so a recorded graph replays with new
values written into them); rows of slots outside the part are skipped."""
import weakref
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, output, require
from . import slot_push, slotted_state

WG = 256                  # store and RoPE work-group size (one invocation per element / pair)
MAX_HEAD_DIM = 256        # attend keeps q and each invocation's share of the output on chip
ATTEND_WG = 64            # attend's work group: a tile of keys
ROWS_WG = 16              # attend_rows' work group: (token, head) rows of one kv head
ROWS_KEYS = 4             # attend_rows' block of keys: a loop iteration
LLVMPIPE_LOOP_LIMIT = 65535   # loop iterations after which llvmpipe silently ends an invocation


def rows_kernel(dev, dh: int, dv: int, cache_dtype: str, cache_offsets=(0, 0)) -> bool:
    """Whether attention runs attend_rows (one invocation per query row, wide cache loads): on
    CPU devices with subgroup vote, ballot and arithmetic, for head sizes and cache offsets that
    are whole loads (4 floats, 8 halves). Elsewhere it runs attend (a work group per row, its
    keys spread over the group), which GPUs run better."""
    per_load = 8 if cache_dtype == "f16" else 4
    return (dev.lane_kernels and dev.subgroup_arithmetic and dev.subgroup_vote_ballot
            and dh % per_load == 0 and dv % per_load == 0 and all(o % per_load == 0 for o in cache_offsets))


def max_keys(dev, dh: int, dv: int, cache_dtype: str, cache_offsets=(0, 0)) -> int | None:
    """The most keys attention gets right on this device, None for no limit short of memory. On
    a CPU device llvmpipe silently ends an invocation after LLVMPIPE_LOOP_LIMIT loop iterations
    in all (Mesa 22.3): attend_rows loops once per ROWS_KEYS keys, attend as cpu_tile_max_keys
    says."""
    if not dev.lane_kernels:
        return None
    if rows_kernel(dev, dh, dv, cache_dtype, cache_offsets):
        return (LLVMPIPE_LOOP_LIMIT - 64) * ROWS_KEYS
    return cpu_tile_max_keys(dh, dv, cache_dtype)


def cpu_tile_max_keys(dh: int, dv: int, cache_dtype: str) -> int:
    """The most keys attend gets right on llvmpipe. Each tile of ATTEND_WG keys costs about dh
    (f16 cache: dh / 2) iterations for the scores, dv rounded up to ATTEND_WG for the values
    (each invocation's share of the tile), 2 * ATTEND_WG for the softmax and 16 more; fitted
    to the cut-offs measured on lavapipe for dh = dv = 64, 128, 256 and an f16 cache
    (bench/RESULTS.md), a tile short."""
    per_tile = (dh if cache_dtype == "f32" else dh // 2) + ceil(dv / ATTEND_WG) * ATTEND_WG + 2 * ATTEND_WG + 16
    return ((LLVMPIPE_LOOP_LIMIT - 64) // per_tile - 1) * ATTEND_WG


_turns_tables = weakref.WeakKeyDictionary()   # Device -> {(n_rot, theta): Tensor}


def _heads_tensor(op: str, name: str, t: Tensor, dtype="f32"):
    check_tensor(op, name, t, dtype=dtype)
    require(t.ndim == 3, f"{op}: {name} has shape {t.shape}, expected [T, heads, dim]")


# ---- L2 head norm ------------------------------------------------------------------------------
def head_norm_ref(x, scale, head_scale=None, eps=1e-12):
    x64 = x.astype(np.float64)
    y = x64 * scale / np.maximum(np.linalg.norm(x64, axis=-1, keepdims=True), eps)
    if head_scale is not None:
        y = y * head_scale.astype(np.float64)[None, :, None]
    return y.astype(np.float32)


# ---- partial NEOX RoPE ---------------------------------------------------------------------------
def rope_turns_table(n_rot: int, theta: float) -> np.ndarray:
    """[n_rot/2, 3] F32: theta^(-2i/n_rot) / 2pi (turns per position) split as hi + mid + lo,
    hi and mid with 12 significant bits each, so that the shader's products of them with the
    12-bit halves of a position are exact (rope.comp)."""
    turns = np.float64(theta) ** (-2.0 * np.arange(n_rot // 2) / n_rot) / (2 * np.pi)
    hi = _round_bits(turns, 12)
    mid = _round_bits(turns - hi, 12)
    return np.stack([hi, mid, turns - hi - mid], axis=1).astype(np.float32)


def _round_bits(v: np.ndarray, bits: int) -> np.ndarray:
    mantissa, exponent = np.frexp(v)
    return np.ldexp(np.round(mantissa * (1 << bits)), exponent - bits)


def _turns_table(dev, n_rot: int, theta: float) -> Tensor:
    """One table per (device, n_rot, theta), shared by every layer's RoPE dispatch."""
    tables = _turns_tables.setdefault(dev, {})
    key = (n_rot, float(theta))
    if key not in tables:
        tables[key] = dev.upload(rope_turns_table(n_rot, theta), name=f"rope_turns_{n_rot}_{theta:g}")
    return tables[key]


def rope_neox(g: Graph, x: Tensor, positions: Tensor, n_rot: int, theta: float,
              out: Tensor | None = None) -> Tensor:
    """Rotate dims (i, i + n_rot/2), i < n_rot/2, of every head of x [T, H, Dh] by the angle
    positions[t] * theta^(-2i/n_rot); dims >= n_rot are copied. positions: u32 [T], each below
    2^24, read on the GPU. out may be x."""
    _heads_tensor("rope_neox", "x", x)
    tokens, heads, dh = x.shape
    check_tensor("rope_neox", "positions", positions, dtype="u32", shape=(tokens,))
    require(n_rot > 0 and n_rot % 2 == 0 and n_rot <= dh,
            f"rope_neox: n_rot={n_rot} must be even and within 1..{dh} (the head size)")
    require(theta > 0, f"rope_neox: theta={theta} must be positive")
    out = output(g, "rope_neox", out, x.shape)
    table = _turns_table(g.dev, n_rot, theta)
    half = n_rot // 2
    n = tokens * heads * (dh - half)
    g.dispatch("rope", [x, positions, table], [out],
               [n, dh, half, heads, x.offset, positions.offset, table.offset, out.offset],
               groups=ceil(n / WG))
    return out


def rope_neox_ref(x, positions, n_rot, theta):
    """In float64: angles pos * theta^(-2i/n_rot) computed exactly, then rounded to F32."""
    half = n_rot // 2
    freq = np.float64(theta) ** (-2.0 * np.arange(half) / n_rot)
    angle = np.asarray(positions, np.float64)[:, None, None] * freq      # [T, 1, half]
    cos, sin = np.cos(angle), np.sin(angle)
    y = x.astype(np.float64)
    a, b = y[..., :half].copy(), y[..., half:n_rot].copy()
    y[..., :half] = a * cos - b * sin
    y[..., half:n_rot] = b * cos + a * sin
    return y.astype(np.float32)


# ---- KV cache and attention ------------------------------------------------------------------------
def _check_cache(op: str, k_cache: Tensor, v_cache: Tensor, kv_heads: int | None = None) -> tuple:
    """The caches as pool parts [n_part_slots, n_ctx, kv_heads, dim]."""
    k_cache, v_cache = (slotted_state(op, name, c, 3) for name, c in (("k_cache", k_cache), ("v_cache", v_cache)))
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype == "f16":
            require(c.offset % 2 == 0 and c.shape[2] * c.shape[3] % 2 == 0,
                    f"{op}: f16 {name} {c} needs an even offset and an even heads * dim")
    require(k_cache.dtype == v_cache.dtype,
            f"{op}: k_cache is {k_cache.dtype} but v_cache is {v_cache.dtype}")
    require(k_cache.shape[:3] == v_cache.shape[:3],
            f"{op}: k_cache {k_cache.shape} and v_cache {v_cache.shape} differ in [slots, n_ctx, kv_heads]")
    if kv_heads is not None:
        require(k_cache.shape[2] == kv_heads,
                f"{op}: caches have {k_cache.shape[2]} kv heads, expected {kv_heads}")
    return k_cache, v_cache


def _check_positions(op: str, positions: Tensor, tokens: int):
    check_tensor(op, "positions", positions, dtype="u32", shape=(tokens,))


def kv_store(g: Graph, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor,
             slots: Tensor | None = None, slot_lo: int = 0):
    """Write row t of k [T, Hkv, Dh] and v [T, Hkv, Dv] into cache row positions[t] of slot
    slots[t] (u32 [T] each, read on the GPU); positions at or past n_ctx are dropped there (the
    caller keeps them within n_ctx)."""
    _heads_tensor("kv_store", "k", k)
    _heads_tensor("kv_store", "v", v)
    require(k.shape[:2] == v.shape[:2], f"kv_store: k {k.shape} and v {v.shape} differ in [T, kv_heads]")
    k_cache, v_cache = _check_cache("kv_store", k_cache, v_cache, kv_heads=k.shape[1])
    _check_positions("kv_store", positions, k.shape[0])
    require(k_cache.shape[3] == k.shape[2] and v_cache.shape[3] == v.shape[2],
            f"kv_store: k {k.shape} / v {v.shape} do not match k_cache {k_cache.shape} / "
            f"v_cache {v_cache.shape}")
    per_word = 2 if k_cache.dtype == "f16" else 1
    nk, nv = k.numel // per_word, v.numel // per_word
    row_k = k.shape[1] * k.shape[2] // per_word
    row_v = v.shape[1] * v.shape[2] // per_word
    slot_t, slot_words = slot_push(g, "kv_store", slots, k.shape[0], 1, k_cache, slot_lo)
    g.dispatch(f"attention.store_{k_cache.dtype}", [k, v, positions, slot_t], [k_cache, v_cache],
               [nk, nv, row_k, row_v, k_cache.shape[1], k.offset, v.offset, positions.offset,
                k_cache.offset // per_word, v_cache.offset // per_word, *slot_words],
               groups=ceil((nk + nv) / WG))


def attention(g: Graph, q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, scale: float,
              out: Tensor | None = None, slots: Tensor | None = None, slot_lo: int = 0) -> Tensor:
    """Causal GQA attention: token t of q [T, Hq, Dh] attends to rows 0 .. positions[t] of its
    slot's cache; query head h reads kv head h // (Hq / Hkv). softmax(scale * q.k) in F32.
    Returns [T, Hq, Dv]. Record kv_store for the same tokens before it. Caches longer than
    max_keys are refused."""
    _heads_tensor("attention", "q", q)
    tokens, hq, dh = q.shape
    k_cache, v_cache = _check_cache("attention", k_cache, v_cache)
    _check_positions("attention", positions, tokens)
    _, n_ctx, hkv, dv = v_cache.shape
    require(hq % hkv == 0, f"attention: {hq} query heads are not a multiple of {hkv} kv heads")
    require(dh <= MAX_HEAD_DIM and dv <= MAX_HEAD_DIM,
            f"attention: head sizes {dh}/{dv} exceed the shader's {MAX_HEAD_DIM}")
    require(k_cache.dtype == "f32" or dh % 2 == 0, f"attention: an f16 cache needs an even head size, not {dh}")
    require(k_cache.shape[3] == dh, f"attention: q {q.shape} and k_cache {k_cache.shape} differ in head size")
    offsets = (k_cache.offset, v_cache.offset)
    limit = max_keys(g.dev, dh, dv, k_cache.dtype, offsets)
    require(limit is None or n_ctx <= limit,
            f"attention: caches of {n_ctx} rows, but this kernel gets at most {limit} keys right on {g.dev.name}")
    out = output(g, "attention", out, (tokens, hq, dv))
    slot_t, slot_words = slot_push(g, "attention", slots, tokens, 1, k_cache, slot_lo)
    push = [tokens, hq, hkv, dh, dv, n_ctx, q.offset, k_cache.offset, v_cache.offset,
            positions.offset, out.offset, float(scale), *slot_words]
    buffers = [q, k_cache, v_cache, positions, slot_t]
    if rows_kernel(g.dev, dh, dv, k_cache.dtype, offsets):
        g.dispatch(f"attention.attend_rows_{k_cache.dtype}", buffers, [out], push,
                   groups=hkv * ceil(tokens * (hq // hkv) / ROWS_WG), spec=(dh, dv))
    else:
        g.dispatch(f"attention.attend_{k_cache.dtype}", buffers, [out], push, groups=tokens * hq)
    return out


def kv_store_ref(k, v, k_cache, v_cache, n_past):
    """New caches (copies, in the caches' own dtype) with rows n_past.. written."""
    k_cache, v_cache = k_cache.copy(), v_cache.copy()
    rows = min(len(k), len(k_cache) - n_past)
    k_cache[n_past:n_past + rows] = k[:rows]
    v_cache[n_past:n_past + rows] = v[:rows]
    return k_cache, v_cache


def attention_ref(q, k_cache, v_cache, n_past, scale):
    """Plain softmax attention in float64 over the (already stored) cache rows."""
    tokens, hq, _ = q.shape
    n_ctx, hkv, dv = v_cache.shape
    group = hq // hkv
    k64, v64 = k_cache.astype(np.float64), v_cache.astype(np.float64)
    out = np.zeros((tokens, hq, dv))
    for t in range(tokens):
        n_keys = min(n_past + t + 1, n_ctx)
        for h in range(hq):
            s = scale * (k64[:n_keys, h // group] @ q[t, h].astype(np.float64))
            p = np.exp(s - s.max())
            out[t, h] = p @ v64[:n_keys, h // group] / p.sum()
    return out.astype(np.float32)
