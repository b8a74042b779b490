"""stream_read (the bandwidth ruler) against its numpy twin. Bound: exact (wrapping u32 sums)."""
import numpy as np
import pytest

from conftest import run
from vkinfer.gpu import Tensor
from vkinfer.ops import stream_read as sr


def _words(rng, n):
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)


@pytest.mark.parametrize("pattern", sr.PATTERNS)
@pytest.mark.parametrize("n_quads,per_thread", [(1, 16), (1001, 16), (1001, 3), (1001, 7), (64 * 16, 16)])
def test_sums(dev, rng, n_quads, per_thread, pattern):
    words = _words(rng, 4 * n_quads)
    out = run(dev, lambda g: sr.stream_read(g, dev.upload(words), per_thread, pattern=pattern))
    np.testing.assert_array_equal(dev.read(out), sr.stream_read_ref(words, per_thread))


@pytest.mark.parametrize("pattern", sr.PATTERNS)
def test_at_offsets(dev, rng, pattern):
    """src at a word offset inside a bigger buffer, sums at an offset inside another."""
    words = _words(rng, 4 * 777 + 8 + 12)
    big = dev.upload(words)
    src = Tensor(big.buf, (4 * 777,), "u32", 8)
    groups = sr.n_groups(src.numel, 5)
    sums = dev.zeros((groups + 5,), "u32")
    run(dev, lambda g: sr.stream_read(g, src, 5, out=sums.slice(0, 5, 5 + groups), pattern=pattern))
    got = dev.read(sums)
    np.testing.assert_array_equal(got[5:], sr.stream_read_ref(words[8:8 + 4 * 777], 5))
    assert not got[:5].any()


@pytest.mark.parametrize("pattern", sr.PATTERNS)
def test_large_grid(dev, rng, pattern):
    """More than 65535 work groups (per_thread 1: 64 uvec4s per group)."""
    n_quads = (65535 + 7) * 64 - 5
    words = _words(rng, 4 * n_quads)
    out = run(dev, lambda g: sr.stream_read(g, dev.upload(words), 1, pattern=pattern))
    assert out.numel > 65535
    np.testing.assert_array_equal(dev.read(out), sr.stream_read_ref(words, 1))


def test_refuses_bad_input(dev, rng):
    words = _words(rng, 4 * 10)
    with pytest.raises(ValueError, match="multiples of 4"):
        run(dev, lambda g: sr.stream_read(g, dev.upload(words[:38])))
    with pytest.raises(ValueError, match="u32"):
        run(dev, lambda g: sr.stream_read(g, dev.upload(words.view(np.float32))))
    with pytest.raises(ValueError, match="pattern 'strided' is not one of coalesced, lane"):
        run(dev, lambda g: sr.stream_read(g, dev.upload(words), pattern="strided"))


def test_non_contiguous_then_copy(dev, rng):
    from vkinfer.ops.copy import copy
    grid = _words(rng, 8 * 12).reshape(8, 12)
    view = dev.upload(grid).transpose()          # [12, 8], strides (1, 12)
    with pytest.raises(ValueError, match="not contiguous"):
        run(dev, lambda g: sr.stream_read(g, view))
    out = run(dev, lambda g: sr.stream_read(g, copy(g, view).reshape(-1), 2))
    np.testing.assert_array_equal(dev.read(out), sr.stream_read_ref(grid.T.reshape(-1), 2))
