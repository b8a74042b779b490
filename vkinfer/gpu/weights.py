"""Weight matrices on the device. A matrix is split along its first axis (rows of a 2-D
[out, in] matrix, experts of a 3-D [experts, out, in] stack) into parts that each fit one
storage-buffer binding (`Device.max_binding_bytes`); ops dispatch once per part."""
from dataclasses import dataclass
from math import prod

import numpy as np

from ..errors import VkInferError
from .tensor import BLOCK_TYPES, Tensor, check_tensor, nbytes_of

WEIGHT_DTYPES = ("f32", "f16", "bf16", *BLOCK_TYPES)


@dataclass(frozen=True)
class Weight:
    """`parts` are (start, Tensor) pairs in order along axis 0; part i holds slices
    start_i .. start_i + tensor.shape[0] of a matrix of `shape` and `dtype`."""
    parts: tuple
    shape: tuple
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self):
        return f"Weight({self.dtype}{list(self.shape)}, {len(self.parts)} part(s))"


def as_weight(w) -> Weight:
    """A Weight as is; a plain Tensor as a Weight of one part."""
    if isinstance(w, Weight):
        return w
    if isinstance(w, Tensor):
        return Weight(((0, w),), w.shape, w.dtype)
    raise TypeError(f"expected a Weight or a Tensor, got {type(w).__name__}")


def f32_to_bf16(array: np.ndarray) -> np.ndarray:
    """BF16 bits (uint16) of float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def decode(array: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values a weight array of `dtype` stands for (bf16 arrives as uint16 bits,
    block types as the GGUF bytes [..., row_bytes], decoded by gguf-py)."""
    if dtype in BLOCK_TYPES:
        import gguf
        return gguf.quants.dequantize(array, gguf.GGMLQuantizationType[dtype.upper()]).astype(np.float32)
    if dtype == "bf16" and array.dtype == np.uint16:
        return bf16_to_f32(array)
    return np.asarray(array, np.float32)


def _encode(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` as stored for `dtype`: float32, float16, or uint16 BF16 bits."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"upload_weight: dtype {dtype} is not one of {', '.join(WEIGHT_DTYPES)}")
    if dtype in BLOCK_TYPES:
        if array.dtype != np.uint8:
            raise ValueError(f"upload_weight: {dtype} data must be the raw bytes (uint8), not {array.dtype}")
        return array
    if dtype == "bf16" and array.dtype == np.uint16:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"upload_weight: cannot store a {array.dtype} array as {dtype} "
                         "(BF16 comes as uint16 bits)")
    if dtype == "bf16":
        return f32_to_bf16(array)
    return np.asarray(array, np.float32 if dtype == "f32" else np.float16)


def upload_weight(dev, array: np.ndarray, dtype: str | None = None, name: str = "") -> Weight:
    """Upload a 2-D or 3-D weight, split along axis 0 into parts of at most
    `dev.max_binding_bytes`. dtype defaults to the array's (f32 or f16); pass dtype='bf16' for
    uint16 BF16 bits; float arrays are converted to the dtype asked for. Block types (q4_0 ...)
    take the GGUF bytes as uint8 [..., row_bytes]; the Weight's shape counts elements."""
    if dtype is None:
        dtype = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}.get(array.dtype)
        if dtype is None:
            raise ValueError(f"upload_weight: no weight dtype for numpy {array.dtype}; pass dtype=")
    if array.ndim not in (2, 3):
        raise ValueError(f"upload_weight: weight '{name}' has shape {array.shape}; expected 2-D or 3-D")
    data = _encode(array, dtype)
    shape = tuple(array.shape)
    if dtype in BLOCK_TYPES:
        elems, block_bytes = BLOCK_TYPES[dtype]
        if shape[-1] % block_bytes:
            raise ValueError(f"upload_weight: rows of {shape[-1]} bytes are not whole {dtype} blocks")
        shape = shape[:-1] + (shape[-1] // block_bytes * elems,)
    slice_elems = prod(shape[1:])
    slice_bytes = nbytes_of(dtype, slice_elems)
    # Device buffers are whole 16-byte units, and the binding covers the whole buffer.
    limit = dev.max_binding_bytes // 16 * 16
    per_part = limit * 256 // nbytes_of(dtype, slice_elems * 256)   # an estimate, then...
    while per_part and nbytes_of(dtype, per_part * slice_elems) > limit:     # ...exact
        per_part -= 1
    if per_part == 0:
        raise VkInferError(f"weight '{name}' {array.shape}: one slice along axis 0 takes {slice_bytes} "
                           f"bytes, over the device's binding limit of {dev.max_binding_bytes} bytes")
    parts = []
    for start in range(0, array.shape[0], per_part):
        chunk = data[start:start + per_part]
        part = dev.empty((chunk.shape[0], *shape[1:]), dtype, name=f"{name}[{start}:]" if name else "")
        dev.write(part, chunk)
        parts.append((start, part))
    return Weight(tuple(parts), shape, dtype)


def check_weight(op: str, w, ndim: int) -> Weight:
    """`w` as a Weight of `ndim` dims whose contiguous parts tile axis 0 in order."""
    w = as_weight(w)
    if w.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{op}: weight has dtype {w.dtype}, expected {'/'.join(WEIGHT_DTYPES)}")
    if w.ndim != ndim:
        raise ValueError(f"{op}: weight has shape {w.shape}, expected {ndim} dims")
    expected_start = 0
    for start, part in w.parts:
        check_tensor(op, f"weight part at {start}", part, dtype=w.dtype, shape=(None, *w.shape[1:]))
        if start != expected_start:
            raise ValueError(f"{op}: weight part starts at {start}, expected {expected_start}")
        expected_start += part.shape[0]
    if expected_start != w.shape[0]:
        raise ValueError(f"{op}: weight parts cover {expected_start} of {w.shape[0]} rows")
    return w
