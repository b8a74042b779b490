"""Element-wise ops against their numpy twins. Bound: 1e-6 relative for add/mul/scale
(exact in F32 up to rounding), 2e-6 for silu/softplus/swiglu (GPU exp/log), 1e-6 absolute
plus relative for gelu (the erf approximation is good to 1.5e-7)."""
import numpy as np
import pytest

from conftest import run
from vkinfer.gpu import Tensor
from vkinfer.ops import elementwise as ew

# 257: not a multiple of the work-group size; 17_000_003: more than 65535 groups of 256.
SIZES = [(1,), (257,), (3, 1001)]
BIG = (17_000_003,)


def _check(got, want, rtol, atol=0.0):
    err = np.max(np.abs(got - want) / (atol + rtol * np.maximum(1.0, np.abs(want))))
    assert err <= 1.0, f"max error {np.max(np.abs(got - want)):.3g} over bound"


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("name,bound", [("add", 1e-6), ("mul", 1e-6), ("swiglu", 2e-6)])
def test_binary(dev, rng, shape, name, bound):
    a = rng.standard_normal(shape).astype(np.float32) * 4
    b = rng.standard_normal(shape).astype(np.float32)
    ta, tb = dev.upload(a), dev.upload(b)
    out = run(dev, lambda g: getattr(ew, name)(g, ta, tb))
    _check(dev.read(out), getattr(ew, name + "_ref")(a, b), bound)


@pytest.mark.parametrize("rows,n", [(1, 1), (3, 257), (33, 4096)])
def test_swiglu_rows(dev, rng, rows, n):
    """Rows gate | up (a stacked gate/up projection) at an offset in their buffer."""
    gate_up = (rng.standard_normal((rows, 2 * n)) * 4).astype(np.float32)
    buf = dev.upload(np.concatenate([np.full(5, np.nan, np.float32), gate_up.ravel()]))
    t = Tensor(buf.buf, (rows, 2 * n), "f32", 5)
    out = run(dev, lambda g: ew.swiglu_rows(g, t))
    _check(dev.read(out), ew.swiglu_rows_ref(gate_up), 2e-6)
    with pytest.raises(ValueError, match="expected \\[T, 2n\\]"):
        run(dev, lambda g: ew.swiglu_rows(g, dev.upload(gate_up[:, :-1].copy())))


def test_broadcast_rows(dev, rng):
    a = rng.standard_normal((5, 33)).astype(np.float32)
    w = rng.standard_normal(33).astype(np.float32)
    out = run(dev, lambda g: ew.mul(g, dev.upload(a), dev.upload(w)))
    _check(dev.read(out), a * w, 1e-6)
    with pytest.raises(ValueError, match="does not broadcast"):
        run(dev, lambda g: ew.mul(g, dev.upload(a), dev.upload(w[:32].copy())))


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("name,bound", [("silu", 2e-6), ("softplus", 2e-6), ("gelu", 1e-6)])
def test_unary(dev, rng, shape, name, bound):
    a = (rng.standard_normal(shape) * 8).astype(np.float32)
    a.reshape(-1)[:4] = [25.0, 20.5, -30.0, 0.0][:a.size]   # softplus threshold and tails
    out = run(dev, lambda g: getattr(ew, name)(g, dev.upload(a)))
    _check(dev.read(out), getattr(ew, name + "_ref")(a), bound, atol=bound)


def test_scale(dev, rng):
    h = rng.standard_normal((7, 65)).astype(np.float32)
    th = dev.upload(h)
    s = run(dev, lambda g: ew.scale(g, th, 0.37))
    _check(dev.read(s), ew.scale_ref(h, 0.37), 1e-6)


def test_large_grid(dev, rng):
    """More than 65535 work groups: the grid uses its second dimension."""
    a = rng.standard_normal(BIG).astype(np.float32)
    b = rng.standard_normal(BIG).astype(np.float32)
    out = run(dev, lambda g: ew.add(g, dev.upload(a), dev.upload(b)))
    _check(dev.read(out), a + b, 1e-6)


def test_refuses_non_contiguous(dev, rng):
    from conftest import view_then_copy
    a = rng.standard_normal((6, 9)).astype(np.float32)
    with pytest.raises(ValueError, match="not contiguous"):
        run(dev, lambda g: ew.silu(g, view_then_copy(dev, a)))
