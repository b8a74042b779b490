"""get_rows against its numpy twin, for F32, F16 and BF16 matrices.

Bound: exact. Every F16 and BF16 value is an F32 value, and the shader only widens it, so
the output must equal the decoded rows bit for bit (ids past the last row give zeros)."""
import numpy as np
import pytest

from conftest import run
from vkinfer.gpu import Graph, Tensor
from vkinfer.gpu.weights import decode, f32_to_bf16, upload_weight
from vkinfer.ops.get_rows import get_rows, get_rows_ref
from vkinfer.ops import copy as copy_ops

DTYPES = ["f32", "f16", "bf16"]


def random_weight(rng, shape, dtype):
    """(array to upload, its float32 values)."""
    values = rng.standard_normal(shape).astype(np.float32)
    array = {"f32": values, "f16": values.astype(np.float16), "bf16": f32_to_bf16(values)}[dtype]
    return array, decode(array, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_rows,n_in", [(7, 33), (130, 65), (11, 1000), (3, 2)])
def test_get_rows(dev, rng, dtype, n_rows, n_in):
    array, w = random_weight(rng, (n_rows, n_in), dtype)
    ids = np.array([n_rows - 1, 0, 3 % n_rows, 3 % n_rows, n_rows, 1 % n_rows, 2**32 - 1], np.uint32)
    out = run(dev, lambda g: get_rows(g, upload_weight(dev, array, dtype), dev.upload(ids)))
    np.testing.assert_array_equal(dev.read(out), get_rows_ref(w, ids))


@pytest.mark.parametrize("dtype", DTYPES)
def test_get_rows_at_offsets(dev, rng, dtype):
    """Matrix, ids and out each at an odd element offset inside a bigger buffer (F16/BF16
    rows then start mid-word); the words around out are left alone."""
    n_rows, n_in = 9, 37
    array, w = random_weight(rng, (n_rows, n_in), dtype)
    pad = {"f32": np.zeros(3, np.float32), "f16": np.zeros(3, np.float16), "bf16": np.zeros(3, np.uint16)}[dtype]
    matrix = Tensor(dev.upload(np.concatenate([pad, array.reshape(-1), pad]), dtype=dtype).buf,
                    (n_rows, n_in), dtype, offset=3)
    ids = np.array([8, 2, 5], np.uint32)
    ids_t = Tensor(dev.upload(np.array([99, 99, *ids], np.uint32)).buf, (3,), "u32", offset=2)
    out_buf = dev.upload(np.full(3 * n_in + 10, -3.0, np.float32))
    out = Tensor(out_buf.buf, (3, n_in), "f32", offset=5)
    run(dev, lambda g: get_rows(g, matrix, ids_t, out=out))
    everything = dev.read(out_buf)
    np.testing.assert_array_equal(everything[5:5 + 3 * n_in].reshape(3, n_in), w[ids])
    assert np.all(everything[:5] == -3.0) and np.all(everything[5 + 3 * n_in:] == -3.0)


def test_get_rows_host_ids_replay(dev, rng):
    """Token ids written into a host buffer between replays of one recorded graph."""
    array, w = random_weight(rng, (50, 65), "f16")
    ids = dev.empty((4,), "u32", kind="host")
    g = Graph(dev, "embed")
    out = get_rows(g, upload_weight(dev, array, "f16"), ids)
    for step in ([0, 1, 2, 3], [49, 49, 7, 0], [12, 50, 13, 14]):
        ids.buf.view()[:4] = step
        g.run()
        np.testing.assert_array_equal(dev.read(out), get_rows_ref(w, np.array(step)))


@pytest.mark.parametrize("dtype,n_rows,n_in", [("f32", 600, 1000), ("f16", 1100, 777), ("bf16", 3000, 301)])
def test_get_rows_split_weight(dev, rng, monkeypatch, dtype, n_rows, n_in):
    """A 1 MiB binding limit (as VKINFER_MAX_BINDING_BYTES=1048576 would set) splits the
    matrix; each id is served by the part that holds its row."""
    dev.staging()          # the 16 MiB staging window exists before the limit shrinks
    monkeypatch.setattr(dev, "max_binding_bytes", 1 << 20)
    array, w = random_weight(rng, (n_rows, n_in), dtype)
    weight = upload_weight(dev, array, dtype)
    assert len(weight.parts) >= 2
    starts = [start for start, _ in weight.parts]
    ids = np.array([0, n_rows - 1, *starts[1:], *(s - 1 for s in starts[1:]), n_rows, 17], np.uint32)
    out = run(dev, lambda g: get_rows(g, weight, dev.upload(ids)))
    np.testing.assert_array_equal(dev.read(out), get_rows_ref(w, ids))


def test_get_rows_large_grid(dev, rng):
    """65537 * 256 single-element rows: more than 65535 work groups of 256."""
    array, w = random_weight(rng, (5, 1), "bf16")
    ids = (np.arange(65537 * 256, dtype=np.uint32) * 7) % 6        # id 5 is past the end
    out = run(dev, lambda g: get_rows(g, upload_weight(dev, array, "bf16"), dev.upload(ids)))
    np.testing.assert_array_equal(dev.read(out), get_rows_ref(w, ids))


def test_refuses_non_contiguous_then_copy(dev, rng):
    array, w = random_weight(rng, (10, 6), "f32")
    weight = upload_weight(dev, array)
    ids = np.array([4, 9, 0, 2], np.uint32)
    every_other = dev.upload(np.repeat(ids, 2))
    strided = Tensor(every_other.buf, (4,), "u32", 0, (2,))
    with pytest.raises(ValueError, match="get_rows: ids .* not contiguous"):
        run(dev, lambda g: get_rows(g, weight, strided))
    with pytest.raises(ValueError, match="get_rows: weight part .* not contiguous"):
        run(dev, lambda g: get_rows(g, weight.parts[0][1].transpose(), dev.upload(ids)))
    out = run(dev, lambda g: get_rows(g, weight, copy_ops.copy(g, strided)))
    np.testing.assert_array_equal(dev.read(out), w[ids])


def test_refuses_bad_arguments(dev, rng):
    weight = upload_weight(dev, rng.standard_normal((7, 9)).astype(np.float32))
    g = Graph(dev)
    with pytest.raises(ValueError, match="get_rows: ids has dtype i32"):
        get_rows(g, weight, dev.empty((3,), "i32"))
    with pytest.raises(ValueError, match="get_rows: out has shape"):
        get_rows(g, weight, dev.empty((3,), "u32"), out=dev.empty((3, 8)))
    with pytest.raises(ValueError, match="get_rows: weight has dtype u32"):
        get_rows(g, dev.empty((7, 9), "u32"), dev.empty((3,), "u32"))
    assert len(g) == 0
