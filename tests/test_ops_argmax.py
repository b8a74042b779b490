"""Argmax and top-k against their numpy twins. Both are exact: the ids must equal numpy's
(stable order: value descending, ties to the lower index) and the values are copied bits."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gpu import Graph, Tensor
from vkinfer.ops import sampling_ops as so
from vkinfer.ops import copy as copy_ops

VOCAB = 262147          # ZAYA1's vocabulary: not a multiple of any work-group or chunk size


def at_offset(dev, x, offset=9):
    flat = np.zeros(offset + x.size + 3, np.float32)
    flat[offset:offset + x.size] = x.reshape(-1)
    t = dev.upload(flat)
    return Tensor(t.buf, x.shape, "f32", offset)


def _topk(dev, x, k):
    ids, vals = run(dev, lambda g: so.topk(g, at_offset(dev, x), k))
    want_ids, want_vals = so.topk_ref(x, k)
    assert np.array_equal(dev.read(ids), want_ids)
    assert np.array_equal(dev.read(vals), want_vals)


@pytest.mark.parametrize("shape", [(1, VOCAB), (5, 1001), (3, 1), (2, 4097)])
def test_argmax(dev, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    out = run(dev, lambda g: so.argmax(g, at_offset(dev, x)))
    assert np.array_equal(dev.read(out), so.argmax_ref(x))


def test_argmax_ties_and_infinities(dev):
    x = np.zeros((5, 9000), np.float32)           # row 0: all equal -> 0
    x[1, [8999, 4100, 4097]] = 3.0                # equal maxima in different chunks -> 4097
    x[2, :] = -np.inf                             # all -inf -> 0
    x[2, 6000] = -1e38
    x[3, 7] = np.inf
    x[3, 4] = np.inf                              # +inf twice -> 4
    x[4, :] = -0.0
    x[4, 3] = 0.0                                 # -0 == +0 -> 0
    out = run(dev, lambda g: so.argmax(g, dev.upload(x)))
    assert list(dev.read(out)) == [0, 4097, 6000, 4, 0]


def test_argmax_1d_and_out(dev, rng):
    x = rng.standard_normal(VOCAB).astype(np.float32)
    out = dev.zeros((4,), "u32")
    view = Tensor(out.buf, (1,), "u32", 2)
    run(dev, lambda g: so.argmax(g, dev.upload(x), out=view))
    assert list(dev.read(out)) == [0, 0, np.argmax(x), 0]


def test_argmax_large_grid(dev, rng):
    """65537 rows: both passes run more than 65535 work groups."""
    x = rng.standard_normal((65537, 3)).astype(np.float32)
    out = run(dev, lambda g: so.argmax(g, dev.upload(x)))
    assert np.array_equal(dev.read(out), so.argmax_ref(x))


@pytest.mark.parametrize("k", [1, 2, 40, 64])
def test_topk_vocab(dev, rng, k):
    _topk(dev, rng.standard_normal(VOCAB).astype(np.float32), k)


def test_topk_ties(dev, rng):
    """Four distinct values over the vocabulary: every pick is a tie broken by index, across
    chunk boundaries."""
    _topk(dev, rng.integers(0, 4, VOCAB).astype(np.float32), 64)
    x = np.full(VOCAB, -np.inf, np.float32)
    x[[5, 262146, 4096, 100]] = [1.0, 2.0, 2.0, 1.0]
    _topk(dev, x, 9)                              # 4 real values, then -inf ties by index


@pytest.mark.parametrize("cols,k", [(1, 1), (5, 5), (63, 17), (4095, 64), (4097, 64), (8193, 3)])
def test_topk_small_rows(dev, rng, cols, k):
    _topk(dev, rng.standard_normal(cols).astype(np.float32), k)


def test_topk_rows(dev, rng):
    x = rng.standard_normal((3, 5000)).astype(np.float32)
    ids, vals = run(dev, lambda g: so.topk(g, dev.upload(x), 8))
    want_ids, want_vals = so.topk_ref(x, 8)
    assert np.array_equal(dev.read(ids), want_ids) and np.array_equal(dev.read(vals), want_vals)


def test_replay_reads_new_logits(dev, rng):
    """A recorded graph replayed after the logits change gives the new top-k."""
    logits = dev.empty((VOCAB,))
    g = Graph(dev, "sample")
    ids, vals = so.topk(g, logits, 5)
    for _ in range(2):
        x = rng.standard_normal(VOCAB).astype(np.float32)
        dev.write(logits, x)
        g.run()
        assert np.array_equal(dev.read(ids), so.topk_ref(x, 5)[0])


def test_refuses_non_contiguous_then_copies(dev, rng):
    x = rng.standard_normal((6, 9)).astype(np.float32)
    view = view_then_copy(dev, x)
    with pytest.raises(ValueError, match="argmax: x .* not contiguous"):
        run(dev, lambda g: so.argmax(g, view))
    with pytest.raises(ValueError, match="topk: x .* not contiguous"):
        run(dev, lambda g: so.topk(g, view, 3))
    out = run(dev, lambda g: so.argmax(g, copy_ops.copy(g, view)))
    assert np.array_equal(dev.read(out), so.argmax_ref(x))
    ids, vals = run(dev, lambda g: so.topk(g, copy_ops.copy(g, view), 3))
    assert np.array_equal(dev.read(ids), so.topk_ref(x, 3)[0])


def test_errors(dev):
    g = Graph(dev, "errors")
    with pytest.raises(ValueError, match=r"topk: k=6 must be within 1..5"):
        so.topk(g, dev.empty((5,)), 6)
    with pytest.raises(ValueError, match="topk: out_ids has shape"):
        so.topk(g, dev.empty((50,)), 4, out_ids=dev.empty((5,), "u32"))
    with pytest.raises(ValueError, match="argmax: x has shape"):
        so.argmax(g, dev.empty((2, 3, 4)))
    with pytest.raises(ValueError, match="argmax: out has 3 elements for 2 rows"):
        so.argmax(g, dev.empty((2, 3)), out=dev.empty((3,), "u32"))
    assert len(g) == 0
