"""The ZAYA CCA q/k-mean op (vkinfer.ops.cca.qk_mean) against its float64 numpy twin.

Bound: max |got - want| / max(1, |want|) <= 1e-6 (F32: one add of the conv output to the mean
of at most H/Hkv + 1 raw values; measured 2.4e-7)."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gpu import Graph, Tensor
from vkinfer.ops import cca
from vkinfer.ops import copy as copy_ops

BOUND = 1e-6


def _check(got, want):
    err = np.max(np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want)))
    assert err <= BOUND, f"max error {err:.3g} over the bound {BOUND:g}"
    return err


def _inputs(rng, T, H, Hkv, dh):
    n_qk = (H + Hkv) * dh
    c = (rng.standard_normal((T, n_qk)) * 3).astype(np.float32)
    y = rng.standard_normal((T, n_qk)).astype(np.float32)
    return c, y


def at_offset(dev, array, offset):
    """`array` `offset` floats into a bigger buffer."""
    flat = np.full(offset + array.size + 3, 7.5, np.float32)
    flat[offset:offset + array.size] = array.reshape(-1)
    return Tensor(dev.upload(flat).buf, array.shape, "f32", offset)


# (T, H, Hkv, dh): GQA 4:1 like ZAYA, 2:1 with an odd head size, MHA, ZAYA1-8B's decode shape
@pytest.mark.parametrize("shape", [(5, 4, 2, 16), (3, 6, 3, 13), (7, 3, 3, 5), (1, 8, 2, 128)])
def test_qk_mean(dev, rng, shape):
    T, H, Hkv, dh = shape
    c, y = _inputs(rng, T, H, Hkv, dh)
    q, k = run(dev, lambda g: cca.qk_mean(g, dev.upload(c), dev.upload(y), H, Hkv, dh))
    want_q, want_k = cca.qk_mean_ref(c, y, H, Hkv, dh)
    assert q.shape == (T, H, dh) and k.shape == (T, Hkv, dh)
    _check(dev.read(q), want_q)
    _check(dev.read(k), want_k)


def test_means_by_hand(dev):
    """One token, 2 query heads on 1 kv head of size 1: q_h = y_h + (c_h + c_k) / 2,
    k = y_k + ((c_q0 + c_q1) / 2 + c_k) / 2."""
    c = np.array([[2.0, 4.0, 8.0]], np.float32)
    y = np.array([[0.5, 0.25, 1.0]], np.float32)
    q, k = run(dev, lambda g: cca.qk_mean(g, dev.upload(c), dev.upload(y), 2, 1, 1))
    np.testing.assert_array_equal(dev.read(q).reshape(-1), [0.5 + 5.0, 0.25 + 6.0])
    np.testing.assert_array_equal(dev.read(k).reshape(-1), [1.0 + 5.5])


def test_offsets_and_outputs_in_place(dev, rng):
    """Inputs and outputs inside bigger buffers; the outputs go where they are asked to."""
    T, H, Hkv, dh = 4, 4, 2, 9
    c, y = _inputs(rng, T, H, Hkv, dh)
    tc, ty = at_offset(dev, c, 5), at_offset(dev, y, 11)
    out = dev.upload(np.full(3 + T * (H + Hkv) * dh + 2, 7.5, np.float32))
    q_out = Tensor(out.buf, (T, H, dh), "f32", 3)
    k_out = Tensor(out.buf, (T, Hkv, dh), "f32", 3 + T * H * dh)
    run(dev, lambda g: cca.qk_mean(g, tc, ty, H, Hkv, dh, q_out=q_out, k_out=k_out))
    want_q, want_k = cca.qk_mean_ref(c, y, H, Hkv, dh)
    _check(dev.read(q_out), want_q)
    _check(dev.read(k_out), want_k)
    whole = dev.read(out)
    assert (whole[:3] == 7.5).all() and (whole[-2:] == 7.5).all()


def test_large_grid(dev, rng):
    """13108 tokens of ZAYA1-8B's 1280 channels: more than 65535 groups of 256."""
    T, H, Hkv, dh = 13108, 8, 2, 128
    c, y = _inputs(rng, T, H, Hkv, dh)
    assert T * (H + Hkv) * dh > 65535 * cca.WG
    q, k = run(dev, lambda g: cca.qk_mean(g, dev.upload(c), dev.upload(y), H, Hkv, dh))
    want_q, want_k = cca.qk_mean_ref(c, y, H, Hkv, dh)
    _check(dev.read(q), want_q)
    _check(dev.read(k), want_k)


def test_refuses_non_contiguous_then_copies(dev, rng):
    T, H, Hkv, dh = 6, 4, 2, 4
    c, y = _inputs(rng, T, H, Hkv, dh)
    view = view_then_copy(dev, c)
    with pytest.raises(ValueError, match="qk_mean: c .* not contiguous"):
        run(dev, lambda g: cca.qk_mean(g, view, dev.upload(y), H, Hkv, dh))
    q, k = run(dev, lambda g: cca.qk_mean(g, copy_ops.copy(g, view), dev.upload(y), H, Hkv, dh))
    want_q, want_k = cca.qk_mean_ref(c, y, H, Hkv, dh)
    _check(dev.read(q), want_q)
    _check(dev.read(k), want_k)


def test_shape_errors(dev):
    g = Graph(dev, "errors")
    c = dev.empty((3, 24))
    with pytest.raises(ValueError, match="qk_mean: 3 query heads are not a multiple of 2"):
        cca.qk_mean(g, c, c, 3, 2, 4)
    with pytest.raises(ValueError, match="qk_mean: c has shape"):
        cca.qk_mean(g, c, c, 4, 2, 5)
    with pytest.raises(ValueError, match="qk_mean: y has shape"):
        cca.qk_mean(g, c, dev.empty((2, 24)), 4, 2, 4)
    with pytest.raises(ValueError, match="qk_mean: k_out has shape"):
        cca.qk_mean(g, c, c, 4, 2, 4, k_out=dev.empty((3, 4, 4)))
    with pytest.raises(ValueError, match="qk_mean: c has dtype u32"):
        cca.qk_mean(g, dev.empty((3, 24), "u32"), c, 4, 2, 4)


# ---- the fused CCA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("H,Hkv,dh,n_rot,K1,K2,T,n_seq", [
    (2, 1, 8, 4, 2, 2, 1, 1), (2, 1, 8, 8, 2, 2, 3, 1), (4, 2, 130, 64, 2, 2, 2, 2),
    (8, 2, 128, 64, 2, 2, 1, 3), (3, 3, 36, 10, 3, 3, 4, 1), (8, 2, 128, 64, 2, 2, 5, 2),
    (2, 1, 9, 4, 2, 3, 3, 1)])
def test_cca_qkv(dev, rng, H, Hkv, dh, n_rot, K1, K2, T, n_seq):
    """Against the unfused twins (ssm_conv, conv1d_grouped, qk_mean, head_norm, rope_neox and
    the value shift), sequences in slots of a pool (one slot unused, untouched), at positions
    past 2^12; q, k, v and both states. Bound 2e-5 relative to max(1, |want|): F32 sums of up to
    2 * 130 products of O(1) terms before a norm."""
    from vkinfer.ops.cca import cca_qkv, cca_qkv_ref, repack_grouped
    C, S, v1w, v2w = (H + Hkv) * dh, K1 - 1 + K2 - 1, 3 + dh // 2, 5 + dh // 2
    rows, n_slots = T * n_seq, n_seq + 1
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    c, w_dw, b_dw, w_grp, b_grp = f(rows, C + v1w + v2w), f(C, K1), f(C), f(C, dh, K2) / dh, f(C)
    k_scale = (1 + 0.3 * f(Hkv)).astype(np.float32)
    cstate, vstate = f(n_slots, C, S), f(n_slots, v2w, 1)
    slot_of = rng.permutation(n_slots)[:n_seq].astype(np.uint32)
    positions = (5000 + rng.integers(0, 100, n_seq)[:, None] + np.arange(T)).reshape(-1).astype(np.uint32)
    tc, tv = dev.upload(cstate), dev.upload(vstate)
    q, k, v = run(dev, lambda g: cca_qkv(
        g, dev.upload(c), tc, tv, dev.upload(w_dw), dev.upload(b_dw), dev.upload(repack_grouped(w_grp, H + Hkv)),
        dev.upload(b_grp),
        dev.upload(k_scale), dev.upload(positions), H, Hkv, n_rot, 5e6, v1w,
        slots=dev.upload(np.repeat(slot_of, T)), n_seq=n_seq))
    got = [dev.read(t) for t in (q, k, v, tc, tv)]
    want_c, want_v = cstate.copy(), vstate.copy()
    for s, slot in enumerate(slot_of):
        r = slice(s * T, (s + 1) * T)
        wq, wk, wv, want_c[slot], want_v[slot] = cca_qkv_ref(
            c[r], cstate[slot], vstate[slot], w_dw, b_dw, w_grp, b_grp, k_scale, positions[r], H, Hkv,
            n_rot, 5e6, v1w)
        for name, a, b in (("q", got[0][r], wq), ("k", got[1][r], wk), ("v", got[2][r], wv)):
            err = np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))
            assert err <= 2e-5, f"{name}: max relative error {err:.3g}"
    np.testing.assert_array_equal(got[3], want_c)
    np.testing.assert_array_equal(got[4], want_v)


def test_cca_qkv_without_depthwise_bias(dev, rng):
    from vkinfer.ops.cca import cca_qkv, cca_qkv_ref, repack_grouped
    H, Hkv, dh, C = 2, 1, 8, 24
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    c, w_dw, w_grp, b_grp, cs, vs = f(2, C + 6), f(C, 2), f(C, dh, 2), f(C), f(C, 2), f(3, 1)
    ks, pos = np.ones(1, np.float32), np.array([0, 1], np.uint32)
    tc = dev.upload(cs)
    q, k, v = run(dev, lambda g: cca_qkv(g, dev.upload(c), tc, dev.upload(vs), dev.upload(w_dw), None,
                                         dev.upload(repack_grouped(w_grp, 3)), dev.upload(b_grp), dev.upload(ks),
                                         dev.upload(pos), H, Hkv, 4, 1e4, 3))
    wq, wk, wv, wc, _ = cca_qkv_ref(c, cs, vs, w_dw, None, w_grp, b_grp, ks, pos, H, Hkv, 4, 1e4, 3)
    np.testing.assert_allclose(dev.read(q), wq, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dev.read(k), wk, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(dev.read(v), wv)
    np.testing.assert_array_equal(dev.read(tc), wc)
