"""Row softmax against its float64 numpy twin. Bound: |got - want| <= 1e-6 * want + 1e-9
(exp and one divide in F32; the running max keeps every exponent <= 0; rows of up to 262147
columns)."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gpu import Tensor
from vkinfer.ops import softmax as sm
from vkinfer.ops import copy as copy_ops


def _check(got, want):
    err = np.max(np.abs(got.astype(np.float64) - want) / (1e-6 * want + 1e-9))
    assert err <= 1.0, f"max error {np.max(np.abs(got - want)):.3g} over the bound"


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 1001), (2, 262147)])
def test_softmax(dev, rng, shape):
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    out = run(dev, lambda g: sm.softmax(g, dev.upload(x)))
    _check(dev.read(out), sm.softmax_ref(x))


def test_extremes(dev):
    """Large magnitudes (exp would overflow without the max), -inf entries (masked logits)
    and equal values."""
    x = np.array([[1e4, 1e4 - 1, -1e4, 3e38],
                  [-1e4, -1e4 - 2, -1e4 - 40, -3e38],
                  [2.5, 2.5, 2.5, 2.5],
                  [0.0, -np.inf, 1.0, -np.inf]], np.float32)
    out = run(dev, lambda g: sm.softmax(g, dev.upload(x)))
    _check(dev.read(out), sm.softmax_ref(x))


def test_in_place_at_offset(dev, rng):
    x = rng.standard_normal((7, 129)).astype(np.float32)
    flat = np.full(11 + x.size + 4, 9.0, np.float32)
    flat[11:11 + x.size] = x.reshape(-1)
    t = dev.upload(flat)
    view = Tensor(t.buf, x.shape, "f32", 11)
    run(dev, lambda g: sm.softmax(g, view, out=view))
    _check(dev.read(view), sm.softmax_ref(x))
    whole = dev.read(t)
    assert np.all(whole[:11] == 9.0) and np.all(whole[11 + x.size:] == 9.0)


def test_large_grid(dev, rng):
    """70001 rows: one work group each, so the grid uses its second dimension."""
    x = rng.standard_normal((70001, 3)).astype(np.float32)
    out = run(dev, lambda g: sm.softmax(g, dev.upload(x)))
    _check(dev.read(out), sm.softmax_ref(x))


def test_refuses_non_contiguous_then_copies(dev, rng):
    x = rng.standard_normal((6, 9)).astype(np.float32)
    view = view_then_copy(dev, x)
    with pytest.raises(ValueError, match="softmax: x .* not contiguous"):
        run(dev, lambda g: sm.softmax(g, view))
    out = run(dev, lambda g: sm.softmax(g, copy_ops.copy(g, view)))
    _check(dev.read(out), sm.softmax_ref(x))


def test_shape_errors(dev):
    from vkinfer.gpu import Graph
    g = Graph(dev, "errors")
    with pytest.raises(ValueError, match="softmax: out has shape"):
        sm.softmax(g, dev.empty((3, 4)), out=dev.empty((4, 3)))
    with pytest.raises(ValueError, match="softmax: x has dtype u32"):
        sm.softmax(g, dev.empty((3, 4), "u32"))
