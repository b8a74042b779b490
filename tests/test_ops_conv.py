"""im2col1d and conv1d_grouped against their numpy twins, and ZAYA's two-stage CCA conv
(ssm_conv depthwise K=2, S=2, then conv1d_grouped with 10 groups of 128) against a
straightforward numpy transcription of zaya1.md §3.2 step 3.

Error bounds: im2col1d is an exact copy (0). conv1d_grouped: |got - want| <= 1e-6 * max(1, m)
where m = sum |w * x| + |b| is the magnitude of the terms summed (F32 accumulation of
C_in/groups * K products). The ZAYA chain: |got - want| <= 1e-5 * max(1, |want|). Chunked (1, 3, rest) with the
carried state equals all at once to 1e-6."""
import numpy as np
import pytest

from conftest import at_offset, check_scaled, run, view_then_copy
from vkinfer.ops import conv, ssm
from vkinfer.ops import copy as copy_ops

GUARD = -3.5


def check_conv(got, x, w, b, groups, what):
    want = conv.conv1d_grouped_ref(x, w, b, groups)
    magnitude = conv.conv1d_grouped_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), groups)
    check_scaled(got, want, 1e-6, what, magnitude)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- im2col1d ----------------------------------------------------------------------------------
@pytest.mark.parametrize("T_in,C,K", [(9, 40, 3), (2, 1, 2), (13, 1280, 2), (5, 7, 1), (4, 3, 4)])
def test_im2col1d(dev, rng, T_in, C, K):
    x = randn(rng, T_in, C)
    cols = run(dev, lambda g: conv.im2col1d(g, dev.upload(x), K))
    assert cols.shape == (T_in - K + 1, C * K)
    assert np.array_equal(dev.read(cols), conv.im2col1d_ref(x, K))


def test_im2col1d_at_offsets(dev, rng):
    x = randn(rng, 8, 21)
    tx, _ = at_offset(dev, GUARD, x, before=13)
    tout, whole_out = at_offset(dev, GUARD, np.zeros((6, 63), np.float32), before=3, after=5)
    run(dev, lambda g: conv.im2col1d(g, tx, 3, out=tout))
    flat = dev.read(whole_out)
    assert np.array_equal(dev.read(tout), conv.im2col1d_ref(x, 3))
    assert np.all(flat[:3] == GUARD) and np.all(flat[-5:] == GUARD)


def test_im2col1d_matches_conv_weight_layout(dev, rng):
    """cols @ w.reshape(C_out, -1).T is the groups=1 conv: im2col's column order is (c, k),
    the order of a PyTorch conv weight [C_out, C_in, K] flattened."""
    x, w, b = randn(rng, 10, 6), randn(rng, 5, 6, 3), randn(rng, 5)
    cols = dev.read(run(dev, lambda g: conv.im2col1d(g, dev.upload(x), 3)))
    check_scaled(cols @ w.reshape(5, -1).T + b, conv.conv1d_grouped_ref(x, w, b, 1), 1e-6, "im2col as conv")


def test_im2col1d_large_grid(dev, rng):
    """More than 65535 work groups of 64 outputs."""
    x = randn(rng, 2051, 1025)
    cols = run(dev, lambda g: conv.im2col1d(g, dev.upload(x), 2))
    assert np.array_equal(dev.read(cols), conv.im2col1d_ref(x, 2))


# ---- conv1d_grouped ----------------------------------------------------------------------------
@pytest.mark.parametrize("T_in,C_in,C_out,groups,K,bias", [
    (3, 1280, 1280, 10, 2, True),    # ZAYA: 10 groups of 128, a 2-token chunk (T_in = T+1)
    (2, 1280, 1280, 10, 2, True),    # ZAYA decode
    (11, 21, 14, 7, 3, False),
    (6, 5, 3, 1, 4, True),
    (9, 12, 24, 12, 2, True),        # depthwise with a channel multiplier of 2
    (4, 9, 9, 3, 1, False),
    (20, 6, 6, 2, 3, True),          # 18 outputs: two full tiles of 8 tokens and a partial one
])
def test_conv1d_grouped(dev, rng, T_in, C_in, C_out, groups, K, bias):
    x, w = randn(rng, T_in, C_in), randn(rng, C_out, C_in // groups, K)
    b = randn(rng, C_out) if bias else None
    out = run(dev, lambda g: conv.conv1d_grouped(g, dev.upload(x), dev.upload(w),
                                                 dev.upload(b) if bias else None, groups))
    assert out.shape == (T_in - K + 1, C_out)
    check_conv(dev.read(out), x, w, b, groups, f"conv1d_grouped {T_in}x{C_in}->{C_out} g{groups} K{K}")


def test_conv1d_grouped_ref_is_pytorch_conv(rng):
    """The twin against a direct loop of the PyTorch Conv1d definition."""
    x, w, b = randn(rng, 7, 6), randn(rng, 4, 3, 2), randn(rng, 4)
    want = np.zeros((6, 4))
    for t in range(6):
        for o in range(4):
            grp = o // 2
            want[t, o] = b[o] + sum(w[o, i, k] * x[t + k, grp * 3 + i] for i in range(3) for k in range(2))
    np.testing.assert_allclose(conv.conv1d_grouped_ref(x, w, b, 2), want, rtol=1e-6, atol=1e-6)


def test_conv1d_grouped_at_offsets(dev, rng):
    x, w, b = randn(rng, 5, 20), randn(rng, 10, 4, 2), randn(rng, 10)
    tx, _ = at_offset(dev, GUARD, x, before=7)
    tw, _ = at_offset(dev, GUARD, w, before=1)
    tb, _ = at_offset(dev, GUARD, b, before=2)
    tout, whole_out = at_offset(dev, GUARD, np.zeros((4, 10), np.float32), before=9)
    run(dev, lambda g: conv.conv1d_grouped(g, tx, tw, tb, 5, out=tout))
    check_conv(dev.read(tout), x, w, b, 5, "conv1d at offsets")
    flat = dev.read(whole_out)
    assert np.all(flat[:9] == GUARD) and np.all(flat[-3:] == GUARD)


def test_conv1d_grouped_large_grid(dev, rng):
    """More than 65535 work groups of 64 invocations: one token (one output per invocation),
    depthwise to keep it fast."""
    C = 65535 * 64 + 5
    x, w, b = randn(rng, 2, C), randn(rng, C, 1, 2), randn(rng, C)
    out = run(dev, lambda g: conv.conv1d_grouped(g, dev.upload(x), dev.upload(w), dev.upload(b), C))
    check_conv(dev.read(out), x, w, b, C, "conv1d large grid")


def test_refuses_non_contiguous(dev, rng):
    x, w = randn(rng, 6, 8), randn(rng, 4, 2, 2)
    xt = view_then_copy(dev, x)
    with pytest.raises(ValueError, match="im2col1d: x .* not contiguous"):
        run(dev, lambda g: conv.im2col1d(g, xt, 2))
    with pytest.raises(ValueError, match="conv1d_grouped: x .* not contiguous"):
        run(dev, lambda g: conv.conv1d_grouped(g, xt, dev.upload(w), None, 4))
    copy = copy_ops.copy
    cols = run(dev, lambda g: conv.im2col1d(g, copy(g, xt), 2))
    assert np.array_equal(dev.read(cols), conv.im2col1d_ref(x, 2))
    out = run(dev, lambda g: conv.conv1d_grouped(g, copy(g, xt), dev.upload(w), None, 4))
    check_conv(dev.read(out), x, w, None, 4, "conv1d after copy")


def test_checks_shapes(dev, rng):
    x = dev.upload(randn(rng, 3, 8))
    with pytest.raises(ValueError, match="im2col1d: 3 input tokens are fewer than the kernel size 4"):
        run(dev, lambda g: conv.im2col1d(g, x, 4))
    with pytest.raises(ValueError, match="conv1d_grouped: 3 groups do not divide"):
        run(dev, lambda g: conv.conv1d_grouped(g, x, dev.empty((6, 2, 2)), None, 3))
    with pytest.raises(ValueError, match="conv1d_grouped: w has 4 input channels per group"):
        run(dev, lambda g: conv.conv1d_grouped(g, x, dev.empty((4, 4, 2)), None, 4))
    with pytest.raises(ValueError, match="conv1d_grouped: b"):
        run(dev, lambda g: conv.conv1d_grouped(g, x, dev.empty((4, 2, 2)), dev.empty(3), 4))
    with pytest.raises(ValueError, match="conv1d_grouped: kernel size 33"):
        run(dev, lambda g: conv.conv1d_grouped(g, dev.upload(randn(rng, 40, 8)), dev.empty((4, 2, 33)), None, 4))
    with pytest.raises(ValueError, match="conv1d_grouped: out"):
        run(dev, lambda g: conv.conv1d_grouped(g, x, dev.empty((4, 2, 2)), None, 4, out=dev.empty((3, 4))))


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


def zaya_chain(g, tc, tstate, twd, tbd, tWg, tbg):
    d = ssm.ssm_conv(g, tc, tstate, twd, tbd)                  # [T+1, 1280]
    return conv.conv1d_grouped(g, d, tWg, tbg, 10)              # [T, 1280]


@pytest.mark.parametrize("T", [1, 3, 7])
@pytest.mark.parametrize("zero_state", [True, False])
def test_zaya_two_stage_conv(dev, rng, T, zero_state):
    wd, bd, Wg, bg = zaya_weights(rng)
    c = randn(rng, T, 1280)
    state = np.zeros((1280, 2), np.float32) if zero_state else randn(rng, 1280, 2)
    tstate = dev.upload(state)
    y = run(dev, lambda g: zaya_chain(g, dev.upload(c), tstate, *map(dev.upload, (wd, bd, Wg, bg))))
    want, want_state = zaya_cca_conv_numpy(c, state, wd, bd, Wg, bg)
    check_scaled(dev.read(y), want, 1e-5, f"zaya conv T{T} zero_state={zero_state}")
    assert np.array_equal(dev.read(tstate), want_state)


def test_zaya_two_stage_conv_chunks_equal_whole(dev, rng):
    T = 9
    weights = [dev.upload(a) for a in zaya_weights(rng)]
    c, state = randn(rng, T, 1280), randn(rng, 1280, 2)
    tc = dev.upload(c)
    whole_state = dev.upload(state)
    whole = dev.read(run(dev, lambda g: zaya_chain(g, tc, whole_state, *weights)))
    chunk_state = dev.upload(state)
    outs = run(dev, lambda g: [zaya_chain(g, tc.slice(0, a, e), chunk_state, *weights)
                               for a, e in ((0, 1), (1, 4), (4, T))])
    np.testing.assert_allclose(np.concatenate([dev.read(o) for o in outs]), whole, rtol=0, atol=1e-6)
    assert np.array_equal(dev.read(chunk_state), dev.read(whole_state))
