"""rms_norm against its numpy twin (computed in F64). Bound: 2e-6 relative to max(1, |want|)
(F32 sum of squares over up to 8192 columns, then one inversesqrt and one or two multiplies)."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gpu import Tensor
from vkinfer.ops.norm import rms_norm, rms_norm_ref
from vkinfer.ops import copy as copy_ops

BOUND = 2e-6


def _check(got, want, bound=BOUND):
    err = np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))
    assert err <= bound, f"max relative error {err:.3g} over bound {bound}"


def _at_offset(dev, array, offset):
    """`array` uploaded `offset` floats into a bigger buffer padded with 7s on both sides."""
    flat = np.concatenate([np.full(offset, 7, np.float32), array.ravel(), np.full(5, 7, np.float32)])
    return Tensor(dev.upload(flat).buf, array.shape, "f32", offset)


# Odd widths (not multiples of the 256-wide work group), one over 8192, and a 3-D input.
@pytest.mark.parametrize("shape", [(1, 1), (3, 257), (2, 8193), (5, 4099), (2, 3, 33)])
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm(dev, rng, shape, weighted):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32) if weighted else None
    tw = dev.upload(w) if weighted else None
    out = run(dev, lambda g: rms_norm(g, dev.upload(x), tw, eps=1e-5))
    _check(dev.read(out), rms_norm_ref(x, w, 1e-5))


def test_offsets_and_eps(dev, rng):
    """x, w and out all live at offsets inside bigger buffers; a zero row gives zeros; eps counts."""
    x = rng.standard_normal((4, 301)).astype(np.float32) * 1e-3
    x[2] = 0.0
    w = rng.standard_normal(301).astype(np.float32)
    tx, tw = _at_offset(dev, x, 37), _at_offset(dev, w, 11)
    out_buf = dev.zeros(4 * 301 + 19)
    out = Tensor(out_buf.buf, x.shape, "f32", 13)
    run(dev, lambda g: rms_norm(g, tx, tw, eps=1e-4, out=out))
    got = dev.read(out_buf)
    _check(got[13:13 + x.size].reshape(x.shape), rms_norm_ref(x, w, 1e-4))
    assert np.all(got[2 * 301 + 13:3 * 301 + 13] == 0.0)
    assert np.all(got[:13] == 0.0) and np.all(got[13 + x.size:] == 0.0), "wrote outside out"


def test_many_rows(dev, rng):
    """70001 rows: more than 65535 work groups, so the grid uses its second dimension."""
    x = rng.standard_normal((70_001, 5)).astype(np.float32)
    out = run(dev, lambda g: rms_norm(g, dev.upload(x)))
    _check(dev.read(out), rms_norm_ref(x))


def test_in_place(dev, rng):
    x = rng.standard_normal((3, 513)).astype(np.float32)
    t = dev.upload(x)
    run(dev, lambda g: rms_norm(g, t, out=t))
    _check(dev.read(t), rms_norm_ref(x))


def test_refuses_bad_input(dev, rng):
    x = rng.standard_normal((6, 9)).astype(np.float32)
    with pytest.raises(ValueError, match="rms_norm: w has shape"):
        run(dev, lambda g: rms_norm(g, dev.upload(x), dev.upload(np.ones(8, np.float32))))
    with pytest.raises(ValueError, match="rms_norm: x has dtype f16"):
        run(dev, lambda g: rms_norm(g, dev.upload(x.astype(np.float16))))
    with pytest.raises(ValueError, match="rms_norm: out has shape"):
        run(dev, lambda g: rms_norm(g, dev.upload(x), out=dev.empty((6, 8))))


def test_non_contiguous_then_copy(dev, rng):
    x = rng.standard_normal((6, 9)).astype(np.float32)
    view = view_then_copy(dev, x)
    with pytest.raises(ValueError, match="rms_norm: x .* is not contiguous"):
        run(dev, lambda g: rms_norm(g, view))
    out = run(dev, lambda g: rms_norm(g, copy_ops.copy(g, view)))
    _check(dev.read(out), rms_norm_ref(x))


@pytest.mark.parametrize("T,cols,G", [(1, 128, 1), (7, 128, 2), (5, 99, 3), (3, 4096, 8)])
def test_gated_group_norm(dev, rng, T, cols, G):
    """Mamba-2's gated norm, z as a column slice of a wider row (as it comes out of ssm_in)."""
    from vkinfer.ops import norm
    y = rng.standard_normal((T, cols)).astype(np.float32)
    wide = rng.standard_normal((T, cols + 9)).astype(np.float32)
    w = rng.standard_normal((G, cols // G)).astype(np.float32)
    tw = dev.upload(wide)
    out = run(dev, lambda g: norm.gated_group_norm(g, dev.upload(y), tw.slice(1, 3, 3 + cols), dev.upload(w), G))
    want = norm.gated_group_norm_ref(y, wide[:, 3:3 + cols], w, G)
    np.testing.assert_allclose(dev.read(out), want, rtol=0, atol=2e-5 * max(1, np.abs(want).max()))


# ---- merge_norm: ZAYA's residual merge + the norm after it ----------------------------------------
@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 257), (2, 2048), (5, 4099)])
@pytest.mark.parametrize("variant", ["first", "merge", "combine"])
def test_merge_norm(dev, rng, rows, cols, variant):
    """All three variants on odd and large widths, with the vectors at offsets in one arena and
    (combine) a skip-slot row, an out-of-range id and a chosen probability of 0."""
    from vkinfer.ops.norm import merge_norm, merge_norm_ref
    h = rng.standard_normal((rows, cols)).astype(np.float32)
    res = rng.standard_normal((rows, cols)).astype(np.float32)
    vecs = (1 + 0.3 * rng.standard_normal((5, cols))).astype(np.float32)
    arena = _at_offset(dev, vecs, 3)
    tv = [Tensor(arena.buf, (cols,), "f32", 3 + i * cols) for i in range(5)]
    hs, rs = (vecs[0], vecs[1]), (None if variant == "first" else (vecs[2], vecs[3]))
    E = 4
    probs = rng.random((rows, E + 1)).astype(np.float32)
    ids = rng.integers(0, E, rows).astype(np.uint32)
    if rows > 1:
        ids[0], ids[1] = E, E + 7          # the skip slot, and an id beyond it
    if rows > 2:
        probs[2, ids[2]] = 0.0
    comb = variant == "combine"
    tres = dev.upload(res)
    x = run(dev, lambda g: merge_norm(
        g, dev.upload(h), tres, (tv[0], tv[1]), None if rs is None else (tv[2], tv[3]), tv[4], 1e-5,
        probs=dev.upload(probs) if comb else None, expert_ids=dev.upload(ids) if comb else None))
    want_res, want_x = merge_norm_ref(h, res, hs, rs, vecs[4], 1e-5, probs if comb else None,
                                      ids if comb else None)
    _check(dev.read(tres), want_res)
    _check(dev.read(x), want_x)


def test_merge_norm_matches_unfused(rng):
    """The twin is the unfused ZAYA merge (two res_scale and an add) then rms_norm, and the combine
    variant moe_combine's weighting (zero skip) first."""
    from vkinfer.ops.elementwise import res_scale_ref
    from vkinfer.ops.moe import moe_combine_ref
    from vkinfer.ops.norm import merge_norm_ref
    h, res = rng.standard_normal((2, 3, 40)).astype(np.float32)
    v = rng.standard_normal((5, 40)).astype(np.float32)
    probs = rng.random((3, 3)).astype(np.float32)
    ids = np.array([0, 2, 1], np.uint32)
    r, x = merge_norm_ref(h, res, (v[0], v[1]), (v[2], v[3]), v[4], 1e-5, probs, ids)
    want = res_scale_ref(res, v[2], v[3]) + res_scale_ref(moe_combine_ref(h, probs, ids), v[0], v[1])
    np.testing.assert_allclose(r, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x, rms_norm_ref(want, v[4], 1e-5), rtol=1e-5, atol=1e-6)
