"""copy / cast / concat against their numpy twins. Bound: exact (0 error) for every dtype:
F32/U32/I32 words are copied as bits and every F16 and BF16 value is exactly an F32."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gpu import Tensor
from vkinfer.ops.copy import cast, concat, concat_ref, copy, copy_ref


def _upload(dev, array, dtype, pad=3):
    """`array` uploaded after `pad` elements of padding (an odd offset for 16-bit types)."""
    flat = np.concatenate([np.zeros(pad, array.dtype), array.ravel(), np.zeros(5, array.dtype)])
    t = dev.upload(flat, dtype=dtype)
    return Tensor(t.buf, array.shape, dtype, pad)


def _view(t: Tensor, perm) -> Tensor:
    """The numpy-style transpose of `t` by `perm`, as a strided view."""
    return Tensor(t.buf, tuple(t.shape[p] for p in perm), t.dtype, t.offset,
                  tuple(t.strides[p] for p in perm))


def _data(rng, shape, dtype):
    if dtype == "bf16":
        return (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dtype == "u32":
        return rng.integers(0, 2**32, shape, dtype=np.uint32)
    return rng.standard_normal(shape).astype({"f32": np.float32, "f16": np.float16}[dtype])


PERMS = [((7, 33), (1, 0)), ((3, 5, 257), (2, 0, 1)), ((2, 3, 4, 5), (3, 1, 0, 2)), ((9,), (0,))]


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "u32"])
@pytest.mark.parametrize("shape,perm", PERMS)
def test_permuted_views(dev, rng, dtype, shape, perm):
    a = _data(rng, shape, dtype)
    view = _view(_upload(dev, a, dtype), perm)
    out = run(dev, lambda g: copy(g, view))
    assert out.contiguous and out.shape == view.shape and out.dtype == ("u32" if dtype == "u32" else "f32")
    np.testing.assert_array_equal(dev.read(out), copy_ref(a.transpose(perm), dtype))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_step_and_broadcast_views(dev, rng, dtype):
    """Every other column of a [5, 22] block (a sliced view), and a stride-0 broadcast row."""
    a = _data(rng, (5, 22), dtype)
    t = _upload(dev, a, dtype)
    stepped = Tensor(t.buf, (5, 11), dtype, t.offset + 1, (22, 2))
    out = run(dev, lambda g: cast(g, stepped))
    np.testing.assert_array_equal(dev.read(out), copy_ref(a[:, 1::2], dtype))
    row = Tensor(t.buf, (4, 22), dtype, t.offset + 22, (0, 1))
    out = run(dev, lambda g: copy(g, row))
    np.testing.assert_array_equal(dev.read(out), copy_ref(np.broadcast_to(a[1], (4, 22)), dtype))


def test_f32_bits_exact(dev):
    bits = np.array([0x7FC01234, 0xFF800000, 0x80000000, 0x00000001, 0x7F7FFFFF], np.uint32)
    t = dev.upload(bits.view(np.float32))
    out = run(dev, lambda g: copy(g, Tensor(t.buf, (5,), "f32", 0, (1,))))
    np.testing.assert_array_equal(dev.read(out).view(np.uint32), bits)


def test_out_at_offset(dev, rng):
    a = rng.standard_normal((6, 9)).astype(np.float32)
    view = view_then_copy(dev, a)
    big = dev.zeros(6 * 9 + 20)
    run(dev, lambda g: copy(g, view, out=Tensor(big.buf, (54,), "f32", 17)))
    got = dev.read(big)
    np.testing.assert_array_equal(got[17:17 + 54], a.ravel())
    assert not got[:17].any() and not got[17 + 54:].any(), "wrote outside out"


def test_large_f16_transpose(dev, rng):
    """4099 x 4099 = 16.8M elements: more than 65535 work groups of 256."""
    a = rng.standard_normal((4099, 4099)).astype(np.float16)
    t = dev.upload(a)
    out = run(dev, lambda g: copy(g, _view(t, (1, 0))))
    np.testing.assert_array_equal(dev.read(out), a.T.astype(np.float32))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(dev, rng, axis):
    """A transposed F32 view, a contiguous F16 tensor and an offset BF16 tensor, concatenated."""
    shapes = [[3, 4, 5], [3, 4, 5], [3, 4, 5]]
    for s, n in zip(shapes, (2, 7, 1)):
        s[axis] = n
    a = rng.standard_normal(shapes[0][::-1]).astype(np.float32)     # stored transposed
    b = _data(rng, shapes[1], "f16")
    c = _data(rng, shapes[2], "bf16")
    ta = _view(dev.upload(a), (2, 1, 0))
    tb, tc = dev.upload(b), _upload(dev, c, "bf16")
    out = run(dev, lambda g: concat(g, [ta, tb, tc], axis))
    want = np.concatenate([a.transpose(2, 1, 0), copy_ref(b), copy_ref(c, "bf16")], axis=axis)
    np.testing.assert_array_equal(dev.read(out), want)
    assert out.shape == want.shape
    np.testing.assert_array_equal(concat_ref([a.transpose(2, 1, 0), b.astype(np.float32)], axis),
                                  np.concatenate([a.transpose(2, 1, 0), b], axis=axis))


def test_refuses_bad_input(dev, rng):
    a = dev.upload(rng.standard_normal((4, 6)).astype(np.float32))
    with pytest.raises(ValueError, match="copy: out has 23 elements"):
        run(dev, lambda g: copy(g, a, out=dev.empty(23)))
    with pytest.raises(ValueError, match="copy: out .* is not contiguous"):
        run(dev, lambda g: copy(g, a, out=dev.empty((6, 4)).transpose()))
    with pytest.raises(ValueError, match="copy: src has 5 dims"):
        run(dev, lambda g: copy(g, a.reshape(1, 2, 2, 2, 3)))
    with pytest.raises(ValueError, match="past the end"):
        run(dev, lambda g: copy(g, Tensor(a.buf, (4, 6), "f32", 0, (1, 5))))
    with pytest.raises(ValueError, match="copy: out has dtype f16"):
        run(dev, lambda g: copy(g, a, out=dev.empty((4, 6), "f16")))
    with pytest.raises(ValueError, match="concat: tensors\\[1\\] has shape"):
        run(dev, lambda g: concat(g, [a, dev.empty((4, 5))], 0))
    with pytest.raises(ValueError, match="concat: axis 2 out of range"):
        run(dev, lambda g: concat(g, [a, a], 2))
