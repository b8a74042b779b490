"""The fused ZAYA CCA op (vkinfer.ops.cca.cca_qkv) against the unfused ops' float64 twins."""
import numpy as np
import pytest

from vkinfer.gpu import Graph


@pytest.fixture(params=["lane", "plain"])
def cca_kernel(request, dev, monkeypatch):
    """Each variant of cca_qkv: lane (CPU devices: 64-bit loads, 8 grouped-conv outputs per
    invocation) and plain (GPUs)."""
    monkeypatch.setattr(dev, "lane_kernels", request.param == "lane")
    return f"cca_qkv.{request.param}"


def run_cca(dev, kernel, build):
    """run(), checking that the graph's one dispatch is `kernel`."""
    g = Graph(dev, "test")
    out = build(g)
    g.run()
    assert [node[0] for node in g.nodes] == [kernel]
    return out


# ---- the fused CCA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("H,Hkv,dh,n_rot,K1,K2,T,n_seq", [
    (2, 1, 8, 4, 2, 2, 1, 1), (2, 1, 8, 8, 2, 2, 3, 1), (4, 2, 130, 64, 2, 2, 2, 2),
    (8, 2, 128, 64, 2, 2, 1, 3), (3, 3, 36, 10, 3, 3, 4, 1), (8, 2, 128, 64, 2, 2, 5, 2),
    (2, 1, 9, 4, 2, 3, 3, 1), (3, 3, 36, 10, 3, 3, 9, 2), (8, 2, 128, 64, 2, 2, 13, 1),
    (4, 2, 16, 8, 2, 2, 1500, 1)])
def test_cca_qkv(dev, rng, H, Hkv, dh, n_rot, K1, K2, T, n_seq, cca_kernel):
    """Against the unfused twins (ssm_conv, conv1d_grouped, qk_mean, head_norm, rope_neox and
    the value shift), sequences in slots of a pool (one slot unused, untouched), at positions
    past 2^12; q, k, v and both states. T spans several blocks of TOKENS_PER_GROUP, with a short
    last one, and 1500 tokens (the kernel that looped over them lost its tail on llvmpipe); head
    sizes that are (128, 16), are not (36) and are not even 4-wide (130, 9, 8 for lane) for the
    grouped conv's wide loads. Bound 2e-5 relative to max(1, |want|): F32 sums of up to
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
    q, k, v = run_cca(dev, cca_kernel, lambda g: cca_qkv(
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


def test_cca_qkv_without_depthwise_bias(dev, rng, cca_kernel):
    from vkinfer.ops.cca import cca_qkv, cca_qkv_ref, repack_grouped
    H, Hkv, dh, C = 2, 1, 8, 24
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    c, w_dw, w_grp, b_grp, cs, vs = f(2, C + 6), f(C, 2), f(C, dh, 2), f(C), f(C, 2), f(3, 1)
    ks, pos = np.ones(1, np.float32), np.array([0, 1], np.uint32)
    tc = dev.upload(cs)
    q, k, v = run_cca(dev, cca_kernel, lambda g: cca_qkv(g, dev.upload(c), tc, dev.upload(vs), dev.upload(w_dw), None,
                                         dev.upload(repack_grouped(w_grp, 3)), dev.upload(b_grp), dev.upload(ks),
                                         dev.upload(pos), H, Hkv, 4, 1e4, 3))
    wq, wk, wv, wc, _ = cca_qkv_ref(c, cs, vs, w_dw, None, w_grp, b_grp, ks, pos, H, Hkv, 4, 1e4, 3)
    np.testing.assert_allclose(dev.read(q), wq, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dev.read(k), wk, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(dev.read(v), wv)
    np.testing.assert_array_equal(dev.read(tc), wc)
