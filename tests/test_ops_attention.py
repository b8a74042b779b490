"""Attention-side ops against their numpy twins (float64 inside).

Bounds (max |got - want| / max(1, |want|) unless said otherwise):
* rope_neox: 1.5e-6 of max(1, max |x| over the head), against a float64 twin whose angle
  pos * theta^(-2i/n_rot) is exact, for positions up to 2^24 - 1. The shader reduces the angle
  in exact F32 pieces (rope.comp); what is left is sin/cos and the rotation's rounding, so a
  device whose sin/cos are less accurate than lavapipe's adds its own error. Plain F32
  pos * freq would be off by ~1e-2 at position 10^5.
* kv_store: exact for F32 caches; F16 caches hold the halves numpy's float16 rounds to
  (packHalf2x16 rounds to nearest even on lavapipe; Vulkan leaves the rounding mode open).
* attention (both kernels: attend_rows, which CPU devices run, and attend, which GPUs run): 2e-6
  for logits of order one (unit-normal q and k, scale 1/sqrt(dh), at most a
  few hundred keys), against a float64 softmax over the same cache contents (for F16 caches the
  same halves). The error grows with the logits: ~2.5e-7 per unit of the largest logit (1.1e-5
  measured with logits near 40), as any F32 dot product feeding an exp.
"""
import numpy as np
import pytest

from conftest import run
from vkinfer.gpu import Graph, Tensor
from vkinfer.ops import attention as at
from vkinfer.ops import copy as copy_ops

NP_DTYPE = {"f32": np.float32, "f16": np.float16}


@pytest.fixture(params=["rows", "tile"])
def attention_kernels(request, dev, monkeypatch):
    """Runs a test with each attention kernel: attend_rows (CPU devices, where rows_kernel says)
    and attend (GPUs, and CPU devices without subgroup vote and ballot)."""
    if request.param == "rows" and not (dev.subgroup_arithmetic and dev.subgroup_vote_ballot):
        pytest.skip("the device has no subgroup vote, ballot and arithmetic")
    monkeypatch.setattr(dev, "lane_kernels", request.param == "rows")
    return request.param


def attention_kernel(g):
    """The kernel of the last attention dispatch recorded in g."""
    return [node[0] for node in g.nodes if node[0].startswith("attention.attend")][-1]


def _check(got, want, bound, scale=None):
    scale = np.maximum(1.0, np.abs(want)) if scale is None else scale
    err = np.max(np.abs(got.astype(np.float64) - want) / scale)
    assert err <= bound, f"max error {err:.3g} over the bound {bound:g}"
    return err


def at_offset(dev, array, offset=6, tail=5, kind="storage", guard=7.5):
    """`array` uploaded `offset` elements into a bigger buffer (filled with `guard` around it)."""
    dtype = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16",
             np.dtype(np.uint32): "u32"}[array.dtype]
    flat = np.full(offset + array.size + tail, guard, array.dtype)
    flat[offset:offset + array.size] = array.reshape(-1)
    t = dev.upload(flat, dtype, kind=kind)
    return Tensor(t.buf, array.shape, dtype, offset)


def read_whole(dev, t):
    """The whole buffer `t` lives in, as t's dtype, to check what lies around it."""
    n = t.buf.nbytes // t.elem_bytes
    return dev.read(Tensor(t.buf, (n,), t.dtype))


def transposed_view(dev, array):
    """A non-contiguous [T, H, D] view of `array` (stored as [H, T, D])."""
    stored = dev.upload(np.ascontiguousarray(array.transpose(1, 0, 2)))
    return stored.transpose(0, 1)


# ---- rope_neox ----------------------------------------------------------------------------------
def _rope_check(got, x, positions, n_rot, theta):
    per_head = np.maximum(1.0, np.abs(x).max(axis=-1, keepdims=True))
    return _check(got, at.rope_neox_ref(x, positions, n_rot, theta), 1.5e-6, per_head)


@pytest.mark.parametrize("shape,n_rot", [((5, 3, 16), 8), ((9, 10, 128), 64), ((2, 1, 6), 6)])
@pytest.mark.parametrize("theta", [5e6, 1e4])
def test_rope(dev, rng, shape, n_rot, theta):
    positions = rng.integers(0, 1 << 24, shape[0]).astype(np.uint32)
    positions[:2] = [0, (1 << 24) - 1][:shape[0]]
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    tpos = at_offset(dev, positions, offset=1, kind="host")
    out = run(dev, lambda g: at.rope_neox(g, at_offset(dev, x), tpos, n_rot, theta))
    got = dev.read(out)
    _rope_check(got, x, positions, n_rot, theta)
    assert np.array_equal(got[..., n_rot:], x[..., n_rot:])


def test_rope_positions_around_100k(dev, rng):
    """Decode-like positions near 10^5, in place, and replayed with new positions."""
    x = rng.standard_normal((4, 8, 128)).astype(np.float32)
    tx = at_offset(dev, x)
    tpos = dev.upload(np.zeros(4, np.uint32), kind="host")
    g = Graph(dev, "rope")
    at.rope_neox(g, tx, tpos, 64, 5e6, out=tx)
    for positions in ([99_990, 99_991, 99_992, 99_993], [131_071, 7, 0, 100_000]):
        positions = np.array(positions, np.uint32)
        dev.write(tx, x)
        dev.write(tpos, positions)
        g.run()
        _rope_check(dev.read(tx), x, positions, 64, 5e6)


def test_rope_large_grid(dev, rng):
    """70001 * 2 * 127 pairs and copies: more than 65535 work groups of 256."""
    x = rng.standard_normal((70001, 2, 128)).astype(np.float32)
    positions = rng.integers(0, 200_000, 70001).astype(np.uint32)
    out = run(dev, lambda g: at.rope_neox(g, dev.upload(x), dev.upload(positions), 2, 1e4))
    _rope_check(dev.read(out), x, positions, 2, 1e4)


# ---- kv_store + attention -------------------------------------------------------------------------
def _kv_case(rng, n_ctx, hq, hkv, dh, dv, tokens):
    q = rng.standard_normal((tokens, hq, dh)).astype(np.float32)
    k = rng.standard_normal((tokens, hkv, dh)).astype(np.float32)
    v = rng.standard_normal((tokens, hkv, dv)).astype(np.float32)
    k_cache = rng.standard_normal((n_ctx, hkv, dh)).astype(np.float32)   # rows < n_past: a prefix
    v_cache = rng.standard_normal((n_ctx, hkv, dv)).astype(np.float32)
    return q, k, v, k_cache, v_cache


@pytest.mark.parametrize("cache_dtype", ["f32", "f16"])
@pytest.mark.parametrize("hq,hkv,dh,dv", [(4, 2, 16, 16), (8, 2, 128, 128), (3, 3, 16, 128), (10, 2, 24, 16),
                                         (6, 1, 128, 2)])
@pytest.mark.parametrize("tokens,n_past", [(1, 0), (1, 130), (7, 90), (7, 0)])
def test_store_and_attend(dev, rng, attention_kernels, cache_dtype, hq, hkv, dh, dv, tokens, n_past):
    n_ctx = 141
    q, k, v, k_cache, v_cache = _kv_case(rng, n_ctx, hq, hkv, dh, dv, tokens)
    k_cache, v_cache = k_cache.astype(NP_DTYPE[cache_dtype]), v_cache.astype(NP_DTYPE[cache_dtype])
    tk, tv = at_offset(dev, k_cache, offset=8), at_offset(dev, v_cache, offset=16)   # whole loads
    t_past = at_offset(dev, np.arange(n_past, n_past + tokens, dtype=np.uint32), offset=3, kind="host")
    scale = 1 / np.sqrt(dh)
    graphs = []

    def build(g):
        graphs.append(g)
        at.kv_store(g, at_offset(dev, k), at_offset(dev, v, offset=1), tk, tv, t_past)
        return at.attention(g, at_offset(dev, q, offset=5), tk, tv, t_past, scale)
    out = run(dev, build)
    rows = attention_kernels == "rows" and dv != 2       # dv 2 is not a whole load
    assert rows == at.rows_kernel(dev, dh, dv, cache_dtype, (tk.offset, tv.offset))
    assert not at.rows_kernel(dev, dh, dv, cache_dtype, (tk.offset, 2))
    assert attention_kernel(graphs[0]) == f"attention.attend{'_rows' if rows else ''}_{cache_dtype}"

    want_k, want_v = at.kv_store_ref(k.astype(k_cache.dtype), v.astype(v_cache.dtype),
                                     k_cache, v_cache, n_past)
    assert np.array_equal(dev.read(tk), want_k) and np.array_equal(dev.read(tv), want_v)
    _check(dev.read(out), at.attention_ref(q, want_k, want_v, n_past, scale), 2e-6)


@pytest.mark.parametrize("cache_dtype", ["f32", "f16"])
def test_slotted_store_and_attend(dev, rng, attention_kernels, cache_dtype):
    """Tokens of several slots in one chunk, in any order, some in slots outside the pool part
    (their cache rows and outputs untouched), so that subgroups mix slots and positions."""
    n_slots, n_ctx, hq, hkv, dh, dv = 3, 40, 8, 2, 24, 16
    slot_lo = 2                                   # the part holds slots 2, 3, 4
    slots = np.array([3, 3, 3, 3, 2, 4, 4, 9, 3, 2, 0, 3, 3, 4, 4, 4, 4, 2, 3, 3], np.uint32)
    positions = np.zeros(len(slots), np.uint32)
    for s in np.unique(slots):                   # each slot's tokens at consecutive positions
        rows = np.flatnonzero(slots == s)
        positions[rows] = 11 * (s % 3) + np.arange(len(rows))
    tokens = len(slots)
    q = rng.standard_normal((tokens, hq, dh)).astype(np.float32)
    k = rng.standard_normal((tokens, hkv, dh)).astype(np.float32)
    v = rng.standard_normal((tokens, hkv, dv)).astype(np.float32)
    k_pool = rng.standard_normal((n_slots, n_ctx, hkv, dh)).astype(NP_DTYPE[cache_dtype])
    v_pool = rng.standard_normal((n_slots, n_ctx, hkv, dv)).astype(NP_DTYPE[cache_dtype])
    tk, tv = dev.upload(k_pool), dev.upload(v_pool)
    t_slots, t_pos = dev.upload(slots, kind="host"), dev.upload(positions, kind="host")
    out = dev.upload(np.full((tokens, hq, dv), 7.5, np.float32))
    run(dev, lambda g: (at.kv_store(g, dev.upload(k), dev.upload(v), tk, tv, t_pos, t_slots, slot_lo),
                        at.attention(g, dev.upload(q), tk, tv, t_pos, 0.3, out, t_slots, slot_lo)))
    got_k, got_v, got = dev.read(tk), dev.read(tv), dev.read(out)
    want_k, want_v = k_pool.copy(), v_pool.copy()
    for t, (s, pos) in enumerate(zip(slots, positions)):
        if slot_lo <= s < slot_lo + n_slots:
            want_k[s - slot_lo, pos], want_v[s - slot_lo, pos] = k[t], v[t]
    assert np.array_equal(got_k, want_k) and np.array_equal(got_v, want_v)
    for t, (s, pos) in enumerate(zip(slots, positions)):
        if slot_lo <= s < slot_lo + n_slots:
            want = at.attention_ref(q[t:t + 1], want_k[s - slot_lo], want_v[s - slot_lo], pos, 0.3)
            _check(got[t:t + 1], want, 2e-6)
        else:
            assert np.all(got[t] == 7.5), f"row {t} of slot {s}, outside the part, was written"


@pytest.mark.parametrize("dh,dv,cache_dtype", [(128, 128, "f32"), (256, 256, "f32"), (128, 128, "f16"),
                                               (64, 96, "f32"), (128, 2, "f32")])
def test_attend_at_the_cpu_key_limit(dev, rng, monkeypatch, dh, dv, cache_dtype):
    """The tile kernel on a CPU device (one without subgroup vote and ballot): as many keys as
    cpu_tile_max_keys allows are right on llvmpipe too (which ends an invocation after 65535
    loop iterations; measured cut-offs 10496, 6400, 12544 keys for the first three)."""
    monkeypatch.setattr(dev, "lane_kernels", True)
    monkeypatch.setattr(dev, "subgroup_vote_ballot", False)
    n_ctx = at.cpu_tile_max_keys(dh, dv, cache_dtype)
    assert at.max_keys(dev, dh, dv, cache_dtype) == n_ctx
    _attend_last_of(dev, rng, n_ctx, dh, dv, cache_dtype)
    longer = (dev.empty((n_ctx + 1, 1, dh), cache_dtype), dev.empty((n_ctx + 1, 1, dv), cache_dtype))
    with pytest.raises(ValueError, match=rf"attention: caches of {n_ctx + 1} rows, .* at most {n_ctx} keys"):
        at.attention(Graph(dev, "refused"), dev.empty((1, 2, dh)), *longer, dev.empty((1,), "u32"), 0.1)


@pytest.mark.parametrize("cache_dtype", ["f32", "f16"])
def test_attend_rows_at_its_key_limit(dev, rng, cache_dtype):
    """attend_rows loops once per ROWS_KEYS keys: right at max_keys (261884 keys, 25 times the
    tile kernel's bound for ZAYA1's heads), with small heads to keep the caches small."""
    if not at.rows_kernel(dev, 16, 16, cache_dtype):
        pytest.skip("the device runs the tile kernel")
    n_ctx = at.max_keys(dev, 16, 16, cache_dtype)
    assert n_ctx == at.max_keys(dev, 128, 128, cache_dtype) > 25 * at.cpu_tile_max_keys(128, 128, "f32")
    _attend_last_of(dev, rng, n_ctx, 16, 16, cache_dtype)


def _attend_last_of(dev, rng, n_ctx, dh, dv, cache_dtype):
    """One token at position n_ctx - 1 (two query heads of one kv head) against its twin."""
    q = rng.standard_normal((1, 2, dh)).astype(np.float32)
    k_cache = rng.standard_normal((n_ctx, 1, dh)).astype(NP_DTYPE[cache_dtype])
    v_cache = rng.standard_normal((n_ctx, 1, dv)).astype(NP_DTYPE[cache_dtype])
    last = dev.upload(np.array([n_ctx - 1], np.uint32))
    out = run(dev, lambda g: at.attention(g, dev.upload(q), dev.upload(k_cache), dev.upload(v_cache), last,
                                          1 / np.sqrt(dh)))
    _check(dev.read(out), at.attention_ref(q, k_cache, v_cache, n_ctx - 1, 1 / np.sqrt(dh)), 2e-6)


def test_store_drops_rows_past_the_context(dev, rng):
    """n_past + T > n_ctx: only the rows that fit are written; the buffer around is intact."""
    q, k, v, k_cache, v_cache = _kv_case(rng, 10, 2, 1, 16, 16, 4)
    tk, tv = at_offset(dev, k_cache, tail=40), at_offset(dev, v_cache, tail=40)
    t_past = dev.upload(np.arange(8, 12, dtype=np.uint32), kind="host")
    out = run(dev, lambda g: (at.kv_store(g, dev.upload(k), dev.upload(v), tk, tv, t_past),
                              at.attention(g, dev.upload(q), tk, tv, t_past, 0.25))[1])
    want_k, want_v = at.kv_store_ref(k, v, k_cache, v_cache, 8)
    assert np.array_equal(dev.read(tk), want_k) and np.array_equal(dev.read(tv), want_v)
    assert np.all(read_whole(dev, tk)[6 + k_cache.size:6 + k_cache.size + 40] == 7.5)
    _check(dev.read(out), at.attention_ref(q, want_k, want_v, 8, 0.25), 2e-6)


@pytest.mark.parametrize("cache_dtype", ["f32", "f16"])
def test_chunked_equals_one_shot(dev, rng, attention_kernels, cache_dtype):
    """A 20-token sequence at once, and as a 13-token prefill plus 7 replays of one recorded
    decode graph (n_past and the token's q/k/v written between replays): same outputs."""
    n_ctx, hq, hkv, dh, dv, n = 32, 8, 2, 128, 128, 20
    q, k, v, _, _ = _kv_case(rng, n_ctx, hq, hkv, dh, dv, n)
    scale = 1 / np.sqrt(dh)

    def caches():
        return (dev.zeros((n_ctx, hkv, dh), cache_dtype), dev.zeros((n_ctx, hkv, dv), cache_dtype))

    kc, vc = caches()
    t_past = dev.upload(np.arange(n, dtype=np.uint32), kind="host")
    one_shot = dev.read(run(dev, lambda g: (at.kv_store(g, dev.upload(k), dev.upload(v), kc, vc, t_past),
                                            at.attention(g, dev.upload(q), kc, vc, t_past, scale))[1]))

    kc, vc = caches()
    prefill = dev.read(run(dev, lambda g: (
        at.kv_store(g, dev.upload(k[:13]), dev.upload(v[:13]), kc, vc, t_past.slice(0, 0, 13)),
        at.attention(g, dev.upload(q[:13]), kc, vc, t_past.slice(0, 0, 13), scale))[1]))
    t_past = dev.upload(np.zeros(1, np.uint32), kind="host")
    tq, tk, tv = dev.empty((1, hq, dh)), dev.empty((1, hkv, dh)), dev.empty((1, hkv, dv))
    decode = Graph(dev, "decode")
    at.kv_store(decode, tk, tv, kc, vc, t_past)
    step_out = at.attention(decode, tq, kc, vc, t_past, scale)
    steps = []
    for t in range(13, n):
        dev.write(t_past, np.array([t], np.uint32))
        dev.write(tq, q[t:t + 1])
        dev.write(tk, k[t:t + 1])
        dev.write(tv, v[t:t + 1])
        decode.run()
        steps.append(dev.read(step_out))
    chunked = np.concatenate([prefill] + steps)
    np.testing.assert_allclose(chunked, one_shot, rtol=0, atol=1e-6)
    full_k = np.zeros((n_ctx, hkv, dh), NP_DTYPE[cache_dtype])
    full_v = np.zeros((n_ctx, hkv, dv), NP_DTYPE[cache_dtype])
    full_k[:n], full_v[:n] = k, v
    _check(chunked, at.attention_ref(q, full_k, full_v, 0, scale), 2e-6)


def test_attention_large_grid(dev, rng, attention_kernels):
    """65537 query heads of one token, each its own kv head: more than 65535 work groups."""
    q, _, _, k_cache, v_cache = _kv_case(rng, 3, 65537, 65537, 16, 16, 1)
    t_past = dev.upload(np.array([2], np.uint32))        # the position of the one token
    out = run(dev, lambda g: at.attention(g, dev.upload(q), dev.upload(k_cache), dev.upload(v_cache),
                                          t_past, 0.5))
    _check(dev.read(out), at.attention_ref(q, k_cache, v_cache, 2, 0.5), 2e-6)


# ---- contiguity and shape errors -----------------------------------------------------------------
def test_refuses_non_contiguous_then_copies(dev, rng):
    q, k, v, k_cache, v_cache = _kv_case(rng, 9, 4, 2, 16, 16, 3)
    positions = np.array([3, 4, 5], np.uint32)
    kc, vc = dev.upload(k_cache), dev.upload(v_cache)
    t_past = dev.upload(positions)
    view = transposed_view(dev, q)
    assert not view.contiguous
    for op in (lambda g, t: at.rope_neox(g, t, dev.upload(positions), 16, 1e4),
               lambda g, t: at.attention(g, t, kc, vc, t_past, 0.25)):
        with pytest.raises(ValueError, match="not contiguous"):
            run(dev, lambda g: op(g, view))
    with pytest.raises(ValueError, match="kv_store: k .* not contiguous"):
        run(dev, lambda g: at.kv_store(g, transposed_view(dev, k), dev.upload(v), kc, vc, t_past))

    rotated = run(dev, lambda g: at.rope_neox(g, copy_ops.copy(g, view), dev.upload(positions), 16, 1e4))
    _rope_check(dev.read(rotated), q, positions, 16, 1e4)
    out = run(dev, lambda g: (at.kv_store(g, copy_ops.copy(g, transposed_view(dev, k)), dev.upload(v), kc, vc, t_past),
                              at.attention(g, copy_ops.copy(g, view), kc, vc, t_past, 0.25))[1])
    want_k, want_v = at.kv_store_ref(k, v, k_cache, v_cache, 3)
    _check(dev.read(out), at.attention_ref(q, want_k, want_v, 3, 0.25), 2e-6)


def test_shape_errors(dev):
    g = Graph(dev, "errors")
    x = dev.empty((2, 4, 16))
    kc, vc = dev.empty((8, 2, 16)), dev.empty((8, 2, 16))
    n_past = dev.empty((2,), "u32")          # positions of the two tokens
    with pytest.raises(ValueError, match="rope_neox: n_rot=7 must be even"):
        at.rope_neox(g, x, dev.empty((2,), "u32"), 7, 1e4)
    with pytest.raises(ValueError, match="rope_neox: positions has dtype f32"):
        at.rope_neox(g, x, dev.empty((2,)), 8, 1e4)
    with pytest.raises(ValueError, match="attention: 3 query heads are not a multiple of 2"):
        at.attention(g, dev.empty((2, 3, 16)), kc, vc, n_past, 0.25)
    with pytest.raises(ValueError, match="attention: q .* differ in head size"):
        at.attention(g, dev.empty((2, 4, 8)), kc, vc, n_past, 0.25)
    with pytest.raises(ValueError, match="attention: positions has shape"):
        at.attention(g, x, kc, vc, dev.empty((1,), "u32"), 0.25)
    with pytest.raises(ValueError, match="kv_store: k_cache is f32 but v_cache is f16"):
        at.kv_store(g, dev.empty((2, 2, 16)), dev.empty((2, 2, 16)), kc, dev.empty((8, 2, 16), "f16"), n_past)
    with pytest.raises(ValueError, match="kv_store: caches have 2 kv heads, expected 1"):
        at.kv_store(g, dev.empty((2, 1, 16)), dev.empty((2, 1, 16)), kc, vc, n_past)
    assert len(g) == 0
