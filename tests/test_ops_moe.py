"""The top-1 MoE output op (vkinfer.ops.moe.moe_combine) against its numpy twin.

Bound: exact (one F32 product per element, the same rounding as numpy's float32 product), in
both skip behaviours, including expert ids past the skip slot."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gpu import Graph, Tensor
from vkinfer.ops import moe
from vkinfer.ops import copy as copy_ops


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
