"""Contiguous copies of strided views (the contiguity pass), the F16/BF16 -> F32 cast, and
concat. One shader, copy.comp, reads any up-to-4-D strided view and writes another; F32, U32
and I32 views copy their 32-bit words exactly, F16 and BF16 views are widened to F32."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require

WG = 256
MAX_DIMS = 4
VARIANT = {"f32": "f32", "u32": "f32", "i32": "f32", "f16": "f16", "bf16": "bf16"}


def out_dtype(dtype: str) -> str:
    """What a copy of a `dtype` view holds: F32 for floats, the same type for 32-bit integers."""
    return dtype if dtype in ("u32", "i32") else "f32"


def _check_view(op: str, name: str, t: Tensor):
    check_tensor(op, name, t, dtype=tuple(VARIANT), contiguous=False)
    require(t.ndim <= MAX_DIMS, f"{op}: {name} has {t.ndim} dims; at most {MAX_DIMS} are supported")
    require(all(s >= 0 for s in t.strides), f"{op}: {name} {t} has a negative stride")
    require(t.numel < 2**32, f"{op}: {name} has {t.numel} elements, over the 2^32 limit")
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.strides))
    require(t.numel == 0 or (last + 1) * t.elem_bytes <= t.buf.nbytes,
            f"{op}: {name} {t} reaches past the end of its {t.buf.nbytes}-byte buffer")


def _padded(values, fill) -> list:
    return [fill] * (MAX_DIMS - len(values)) + list(values)


def strided_copy(g: Graph, src: Tensor, dst: Tensor):
    """Copy the view `src` into the view `dst` of the same shape (dst may be strided too)."""
    require(src.shape == dst.shape, f"copy: src {src.shape} and destination {dst.shape} differ")
    require(dst.dtype == out_dtype(src.dtype),
            f"copy: a {src.dtype} view copies into {out_dtype(src.dtype)}, not {dst.dtype}")
    if src.numel == 0:
        return
    n0, n1, n2, n3 = _padded(src.shape, 1)
    g.dispatch(f"copy.{VARIANT[src.dtype]}", [src], [dst],
               [src.numel, n1, n2, n3,
                src.offset, *_padded(src.strides, 0),
                dst.offset, *_padded(dst.strides, 0)],
               groups=ceil(src.numel / WG))


def copy(g: Graph, src: Tensor, out: Tensor | None = None) -> Tensor:
    """A contiguous copy of any strided view `src` (f32/f16/bf16 -> f32; u32/i32 kept)."""
    _check_view("copy", "src", src)
    if out is None:
        out = g.dev.empty(src.shape, out_dtype(src.dtype))
    else:
        check_tensor("copy", "out", out, dtype=out_dtype(src.dtype))
        require(out.numel == src.numel, f"copy: out has {out.numel} elements, src {src.numel}")
        _check_view("copy", "out", out)
    strided_copy(g, src, out.reshape(src.shape))
    return out


cast = copy


def concat(g: Graph, tensors, axis: int, out: Tensor | None = None) -> Tensor:
    """Concatenate views along `axis` into a contiguous tensor, one copy dispatch per input."""
    tensors = list(tensors)
    require(len(tensors) > 0, "concat: no tensors given")
    for i, t in enumerate(tensors):
        _check_view("concat", f"tensors[{i}]", t)
    first = tensors[0]
    require(-first.ndim <= axis < first.ndim, f"concat: axis {axis} out of range for {first.shape}")
    axis %= first.ndim
    dtype = out_dtype(first.dtype)
    for i, t in enumerate(tensors):
        require(t.ndim == first.ndim and all(a == b for k, (a, b) in enumerate(zip(t.shape, first.shape))
                                             if k != axis),
                f"concat: tensors[{i}] has shape {t.shape}, incompatible with {first.shape} "
                f"along axis {axis}")
        require(out_dtype(t.dtype) == dtype, f"concat: tensors[{i}] is {t.dtype}, tensors[0] {first.dtype}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in tensors)
    if out is None:
        out = g.dev.empty(shape, dtype)
    else:
        check_tensor("concat", "out", out, dtype=dtype, shape=shape)
        _check_view("concat", "out", out)
    start = 0
    for t in tensors:
        stop = start + t.shape[axis]
        strided_copy(g, t, out.slice(axis, start, stop))
        start = stop
    return out


# ---- numpy twins -------------------------------------------------------------------------------
def copy_ref(x: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """`x` as copy() returns it; dtype='bf16' for uint16 arrays of bfloat16 bits."""
    if dtype == "bf16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    if x.dtype in (np.uint32, np.int32):
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def concat_ref(arrays, axis: int, dtype: str | None = None) -> np.ndarray:
    return np.concatenate([copy_ref(a, dtype) for a in arrays], axis=axis)
