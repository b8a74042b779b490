"""The top-1 MoE output op (vkinfer.ops.moe.moe_combine), the router and the expert tile table
(moe.expert_tiles) against their numpy twins.

Bound: exact for moe_combine (one F32 product per element, the same rounding as numpy's float32
product), in both skip behaviours, including expert ids past the skip slot; exact for the tile
table (integers)."""
import numpy as np
import pytest
from conftest import run, view_then_copy

from vkinfer.gpu import Graph, Tensor
from vkinfer.ops import copy as copy_ops
from vkinfer.ops import moe


def _inputs(rng, T, n, E):
    h = rng.standard_normal((T, n)).astype(np.float32)
    x = rng.standard_normal((T, n)).astype(np.float32)
    probs = rng.random((T, E + 1)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = rng.integers(0, E + 3, T).astype(np.uint32)      # real experts, the skip slot, beyond
    ids[:3] = [0, E, E + 2][:T]
    return h, x, probs, ids


@pytest.mark.parametrize("skip", ["zero", "identity"])
@pytest.mark.parametrize("T,n,E", [(1, 33, 4), (7, 257, 16), (3, 5, 1)])
def test_moe_combine(dev, rng, skip, T, n, E):
    h, x, probs, ids = _inputs(rng, T, n, E)
    tx = dev.upload(x) if skip == "identity" else None
    out = run(dev, lambda g: moe.moe_combine(g, dev.upload(h), dev.upload(probs), dev.upload(ids),
                                             skip=skip, x=tx))
    want = moe.moe_combine_ref(h, probs, ids, skip, x)
    np.testing.assert_array_equal(dev.read(out), want)
    skipped = ids >= E
    if skip == "zero":
        assert (want[skipped] == 0).all()
    np.testing.assert_array_equal(want[~skipped], h[~skipped] * probs[~skipped, ids[~skipped]][:, None])


def test_in_place_at_offsets(dev, rng):
    """h, probs, ids (in a host buffer) and x at offsets inside bigger buffers; out = h."""
    T, n, E = 5, 19, 3
    h, x, probs, ids = _inputs(rng, T, n, E)
    big = np.full(4 + T * n + 2 * T * n + 3, 7.5, np.float32)
    big[4:4 + T * n] = h.reshape(-1)
    big[4 + T * n: 4 + 2 * T * n] = x.reshape(-1)
    buf = dev.upload(big).buf
    th = Tensor(buf, (T, n), "f32", 4)
    tx = Tensor(buf, (T, n), "f32", 4 + T * n)
    p_flat = np.concatenate([np.zeros(9, np.float32), probs.reshape(-1)])
    tp = Tensor(dev.upload(p_flat).buf, probs.shape, "f32", 9)
    ids_host = dev.upload(np.concatenate([np.zeros(2, np.uint32), ids]), kind="host")
    tids = Tensor(ids_host.buf, (T,), "u32", 2)
    run(dev, lambda g: moe.moe_combine(g, th, tp, tids, skip="identity", x=tx, out=th))
    np.testing.assert_array_equal(dev.read(th), moe.moe_combine_ref(h, probs, ids, "identity", x))
    whole = dev.read(Tensor(buf, (big.size,), "f32"))
    assert (whole[:4] == 7.5).all() and (whole[4 + 2 * T * n:] == 7.5).all()
    np.testing.assert_array_equal(whole[4 + T * n: 4 + 2 * T * n], x.reshape(-1))


def test_large_grid(dev, rng):
    """4100 x 4097 elements: more than 65535 work groups of 256."""
    T, n, E = 4100, 4097, 16
    h, _, probs, ids = _inputs(rng, T, n, E)
    assert T * n > 65535 * moe.WG
    out = run(dev, lambda g: moe.moe_combine(g, dev.upload(h), dev.upload(probs), dev.upload(ids)))
    np.testing.assert_array_equal(dev.read(out), moe.moe_combine_ref(h, probs, ids))


@pytest.mark.parametrize("tile", moe.TILE_SIZES)
@pytest.mark.parametrize("T,E", [(1, 1), (7, 5), (45, 5), (200, 16), (64, 16), (4099, 16), (8192, 1023)])
def test_expert_tiles(dev, rng, T, E, tile):
    """Tokens grouped by expert, 4 or 8 to a tile: unused experts, experts with more than one
    tile, the skip slot (ids E and beyond), every word written (the output starts as 0xDEADBEEF)."""
    ids = rng.integers(0, E + 3, T).astype(np.uint32)
    ids[:min(T, 12)] = ([0] * 9 + [E, E + 2, 0])[:min(T, 12)]
    out = dev.upload(np.full(moe.table_shape(T, E, tile), 0xDEADBEEF, np.uint32))
    run(dev, lambda g: moe.expert_tiles(g, dev.upload(ids), E, tile, out=out))
    want = moe.expert_tiles_ref(ids, E, tile)
    np.testing.assert_array_equal(dev.read(out), want)
    # the twin: every token once, in its slot's tiles, in order
    used = want[want[:, 1] > 0]
    tokens = np.concatenate([tile[2:2 + n] for tile, n in zip(used, used[:, 1])])
    assert sorted(tokens.tolist()) == list(range(T))
    assert all((np.minimum(ids[tile[2:2 + n]], E) == tile[0]).all() for tile, n in zip(used, used[:, 1]))
    assert (used[:, 1] <= tile).all() and (want[len(used):, 0] == moe.NO_TILE).all()


def test_tile_size_by_tokens_per_expert(dev, rng):
    """4-token tiles below 4 tokens per expert on average, else 8; the table a chunk gets."""
    assert [moe.tile_tokens(T, 16) for T in (32, 63, 64, 512)] == [4, 4, 8, 8]
    ids = dev.upload(rng.integers(0, 17, 32).astype(np.uint32))
    assert run(dev, lambda g: moe.expert_tiles(g, ids, 16)).shape == moe.table_shape(32, 16, 4)
    assert max(a * b for a, b in (moe.table_shape(32, 16, t) for t in moe.TILE_SIZES)) == moe.table_words(32, 16)


def test_expert_tiles_at_offsets(dev, rng):
    """ids in a host buffer at an offset, the table at an offset inside a bigger buffer."""
    T, E = 19, 3
    ids = rng.integers(0, E + 1, T).astype(np.uint32)
    host = dev.upload(np.concatenate([np.full(5, 7, np.uint32), ids]), kind="host")
    n, words = moe.table_shape(T, E, 8)
    big = dev.upload(np.full((n + 2, words), 0xDEADBEEF, np.uint32))
    run(dev, lambda g: moe.expert_tiles(g, Tensor(host.buf, (T,), "u32", 5), E, 8, out=big.slice(0, 1, 1 + n)))
    got = dev.read(big)
    np.testing.assert_array_equal(got[1:-1], moe.expert_tiles_ref(ids, E, 8))
    assert (got[0] == 0xDEADBEEF).all() and (got[-1] == 0xDEADBEEF).all()


def test_refuses_non_contiguous_then_copies(dev, rng):
    T, n, E = 6, 9, 4
    h, _, probs, ids = _inputs(rng, T, n, E)
    view = view_then_copy(dev, h)
    tp, tids = dev.upload(probs), dev.upload(ids)
    with pytest.raises(ValueError, match="moe_combine: h .* not contiguous"):
        run(dev, lambda g: moe.moe_combine(g, view, tp, tids))
    out = run(dev, lambda g: moe.moe_combine(g, copy_ops.copy(g, view), tp, tids))
    np.testing.assert_array_equal(dev.read(out), moe.moe_combine_ref(h, probs, ids))


def test_argument_errors(dev):
    g = Graph(dev, "errors")
    h, probs, ids = dev.empty((3, 8)), dev.empty((3, 5)), dev.empty((3,), "u32")
    with pytest.raises(ValueError, match="moe_combine: skip='never' is not one of"):
        moe.moe_combine(g, h, probs, ids, skip="never")
    with pytest.raises(ValueError, match="moe_combine: skip='identity' needs the MoE input x"):
        moe.moe_combine(g, h, probs, ids, skip="identity")
    with pytest.raises(ValueError, match="moe_combine: x is only used with skip='identity'"):
        moe.moe_combine(g, h, probs, ids, x=h)
    with pytest.raises(ValueError, match="moe_combine: probs has shape"):
        moe.moe_combine(g, h, dev.empty((2, 5)), ids)
    with pytest.raises(ValueError, match="moe_combine: expert_ids has dtype f32"):
        moe.moe_combine(g, h, probs, dev.empty((3,)))
    with pytest.raises(ValueError, match="moe_combine: x has shape"):
        moe.moe_combine(g, h, probs, ids, skip="identity", x=dev.empty((3, 7)))
    with pytest.raises(ValueError, match="expert_tiles: n_experts = 1024; at most 1023"):
        moe.expert_tiles(g, ids, 1024)
    with pytest.raises(ValueError, match="expert_tiles: 8193 tokens; at most 8192"):
        moe.expert_tiles(g, dev.empty((8193,), "u32"), 16)
    with pytest.raises(ValueError, match="expert_tiles: out has shape"):
        moe.expert_tiles(g, ids, 4, 8, out=dev.empty((3, 10), "u32"))
    with pytest.raises(ValueError, match="expert_tiles: tiles of 5 tokens; 4 or 8"):
        moe.expert_tiles(g, ids, 4, 5)
    assert len(g) == 0


# ---- the fused router -------------------------------------------------------------------------------
def _router_weights(rng, dtype, rows, R):
    """(upload array, float32 values) of a stacked [rows, R] router weight of `dtype`."""
    from vkinfer.gpu.weights import decode
    if dtype == "f32":
        w = (rng.standard_normal((rows, R)) / np.sqrt(R)).astype(np.float32)
        return w, w
    from test_quant_k import random_blocks

    from vkinfer.gpu.tensor import BLOCK_TYPES
    elems, nbytes = BLOCK_TYPES[dtype]
    if dtype == "q8_0":
        raw = rng.integers(0, 256, (rows, R // elems, nbytes), dtype=np.uint8)
        raw[..., :2] = rng.uniform(1e-3, 1e-2, (rows, R // elems, 1)).astype(np.float16).view(np.uint8)
        raw = raw.reshape(rows, -1)
    else:
        raw = random_blocks(rng, dtype, (rows,), R // elems)
    return raw, decode(raw, dtype).reshape(rows, R)


@pytest.mark.parametrize("dtype,T,R,E", [("f32", 3, 36, 2), ("f32", 1, 252, 16), ("q8_0", 2, 96, 6),
                                         ("q4_k", 2, 256, 16), ("q6_k", 1, 256, 33), ("f32", 6, 36, 2),
                                         ("q4_k", 13, 256, 16), ("q6_k", 5, 256, 255)])
@pytest.mark.parametrize("with_eda", [False, True])
def test_router(dev, rng, dtype, T, R, E, with_eda):
    """The fused router against its twin: r (bias and EDA) in place, probs, and the chosen slot
    wherever the best biased probability leads the second by more than the error bound. Rows go
    ROUTER_ROWS to a work group: T = 5, 6 and 13 end in a short block; 256 slots and width 256
    fill the kernel's shared arrays (ROUTER_MAX)."""
    from vkinfer.gpu.weights import upload_weight
    raw, W = _router_weights(rng, dtype, 2 * R + E + 1, R)
    r = rng.standard_normal((T, R)).astype(np.float32)
    prev = rng.standard_normal((T, R)).astype(np.float32) if with_eda else None
    v = (1 + 0.2 * rng.standard_normal((5, R))).astype(np.float32)
    biases = (0.1 * rng.standard_normal(E + 1)).astype(np.float32)
    tr = dev.upload(r)
    tw = upload_weight(dev, raw, dtype)
    t_eda = dev.upload(v[1]) if with_eda else None
    probs, ids = run(dev, lambda g: moe.router(
        g, tr, dev.upload(v[0]), dev.upload(prev) if with_eda else None, t_eda, dev.upload(v[2]), tw,
        dev.upload(v[3]), dev.upload(v[4]), dev.upload(biases), 1e-5))
    want_r, want_p, want_ids = moe.router_ref(r, v[0], prev, v[1] if with_eda else None, v[2],
                                              W[:R], W[R:2 * R], W[2 * R:], v[3], v[4], biases, 1e-5)
    np.testing.assert_allclose(dev.read(tr), want_r, rtol=1e-6, atol=1e-6)
    got_p = dev.read(probs)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-4, atol=1e-6)
    biased = np.sort(want_p + biases, axis=1)
    clear = biased[:, -1] - biased[:, -2] > 1e-4
    np.testing.assert_array_equal(dev.read(ids)[clear], want_ids[clear])


def test_router_refuses_split_or_wide(dev, rng):
    from vkinfer.gpu.weights import Weight
    w = dev.upload(np.zeros((2 * 8 + 3, 8), np.float32))
    split = Weight(((0, w.slice(0, 0, 10)), (10, w.slice(0, 10, 19))), (19, 8), "f32")
    vec = dev.upload(np.zeros(8, np.float32))
    g = Graph(dev, "t")
    with pytest.raises(ValueError, match="one part"):
        moe.router(g, dev.upload(np.zeros((1, 8), np.float32)), vec, None, None, vec, split, vec, vec,
                   dev.upload(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="prev and eda"):
        moe.router(g, dev.upload(np.zeros((1, 8), np.float32)), vec, None, vec, vec, w, vec, vec,
                   dev.upload(np.zeros(3, np.float32)))
    wide = moe.ROUTER_MAX + 4
    w_wide, v_wide = dev.empty((2 * wide + 3, wide)), dev.empty((wide,))
    with pytest.raises(ValueError, match=f"router width {wide} and 3 slots must be at most {moe.ROUTER_MAX}"):
        moe.router(g, dev.empty((1, wide)), v_wide, None, None, v_wide, w_wide, v_wide, v_wide,
                   dev.upload(np.zeros(3, np.float32)))
