"""The conv twins (conv1d_grouped_ref, im2col1d_ref; the GPU runs ZAYA's convs inside
ops.cca.cca_qkv, tested in test_ops_cca.py against them) against direct transcriptions: the
PyTorch Conv1d definition, and ZAYA's two-stage CCA conv (ssm_conv depthwise K=2, S=2, then
the grouped conv with 10 groups of 128) as zaya1.md §3.2 step 3 writes it. Bound 1e-5 relative
(float64 inside, F32 results); chunked (1, 3, rest) with the carried state equals all at once."""
import numpy as np
import pytest

from vkinfer.ops import conv, ssm


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_conv1d_grouped_ref_is_pytorch_conv(rng):
    """The twin against a direct loop of the PyTorch Conv1d definition."""
    x, w, b = randn(rng, 7, 6), randn(rng, 4, 3, 2), randn(rng, 4)
    want = np.zeros((6, 4))
    for t in range(6):
        for o in range(4):
            grp = o // 2
            want[t, o] = b[o] + sum(w[o, i, k] * x[t + k, grp * 3 + i] for i in range(3) for k in range(2))
    np.testing.assert_allclose(conv.conv1d_grouped_ref(x, w, b, 2), want, rtol=1e-6, atol=1e-6)


def test_im2col1d_ref_matches_conv_weight_layout(rng):
    x, w, b = randn(rng, 6, 4), randn(rng, 5, 4, 3), randn(rng, 5)
    cols = conv.im2col1d_ref(x, 3)
    np.testing.assert_allclose(cols @ w.reshape(5, -1).T + b, conv.conv1d_grouped_ref(x, w, b, 1),
                               rtol=1e-5, atol=1e-5)


# ---- ZAYA's two-stage CCA conv -----------------------------------------------------------------
def zaya_cca_conv_numpy(c, conv_state, wd, bd, Wg, bg, groups=10):
    """zaya1.md §3.2 step 3, written out: c [T, 1280] raw q|k, conv_state [1280, 2]."""
    T = c.shape[0]
    S = np.concatenate([conv_state, c.T], axis=1).astype(np.float64)          # [1280, T+2]
    new_state = S[:, -2:].copy()
    d = S[:, :-1] * wd[:, :1] + S[:, 1:] * wd[:, 1:] + bd[:, None]           # [1280, T+1]
    per = c.shape[1] // groups
    y = np.empty((c.shape[1], T))
    for grp in range(groups):
        ch = slice(grp * per, (grp + 1) * per)
        for n in range(T):
            y[ch, n] = Wg[ch, :, 0] @ d[ch, n] + Wg[ch, :, 1] @ d[ch, n + 1] + bg[ch]
    return y.T.astype(np.float32), new_state.astype(np.float32)


def zaya_weights(rng, C=1280, groups=10):
    return (randn(rng, C, 2), randn(rng, C) * 0.1, randn(rng, C, C // groups, 2) * 0.1,
            randn(rng, C) * 0.1)


def zaya_chain_ref(c, state, wd, bd, Wg, bg):
    d, state = ssm.ssm_conv_ref(c, state, wd, bd)              # [T+1, 1280]
    return conv.conv1d_grouped_ref(d, Wg, bg, 10), state       # [T, 1280]


@pytest.mark.parametrize("T", [1, 3, 7])
@pytest.mark.parametrize("zero_state", [True, False])
def test_zaya_two_stage_conv(rng, T, zero_state):
    wd, bd, Wg, bg = zaya_weights(rng)
    c = randn(rng, T, 1280)
    state = np.zeros((1280, 2), np.float32) if zero_state else randn(rng, 1280, 2)
    y, new_state = zaya_chain_ref(c, state, wd, bd, Wg, bg)
    want, want_state = zaya_cca_conv_numpy(c, state, wd, bd, Wg, bg)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(new_state, want_state)


def test_zaya_two_stage_conv_chunks_equal_whole(rng):
    T = 9
    weights = zaya_weights(rng)
    c, state = randn(rng, T, 1280), randn(rng, 1280, 2)
    whole, whole_state = zaya_chain_ref(c, state, *weights)
    outs = []
    for a, e in ((0, 1), (1, 4), (4, T)):
        y, state = zaya_chain_ref(c[a:e], state, *weights)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs), whole, rtol=0, atol=1e-6)
    assert np.array_equal(state, whole_state)
