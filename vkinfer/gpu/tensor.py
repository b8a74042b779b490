"""Buffers (one kp tensor each) and Tensors (typed, shaped views into a buffer)."""
from dataclasses import dataclass
from math import prod

import numpy as np

# Bytes per element for the plain types.
ELEM_BYTES = {"f32": 4, "u32": 4, "i32": 4, "f16": 2, "bf16": 2}
# GGUF block types: (elements, bytes) per block. Such tensors count their shape and offset in
# elements; an offset must fall on a block boundary.
BLOCK_TYPES = {"q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
               "q8_0": (32, 34), "q2_k": (256, 84), "q3_k": (256, 110), "q4_k": (256, 144),
               "q5_k": (256, 176), "q6_k": (256, 210)}


# Q8_0 and Q6_K are stored on the device in superblocks of 8 GGUF blocks: each block without
# its fp16 scale d, then the 8 scales. Q8_0's 32 quants and Q6_K's 208 bytes of quants and
# sub-block scales are then whole uvec4s, aligned for wide loads (shaders/include/weights.glsl);
# the bytes are the same but for a last superblock padded with zero blocks.
SUPERBLOCK = 8
D_AT = {"q8_0": 0, "q6_k": 208}           # byte offset of d inside the GGUF block


def nbytes_of(dtype: str, n: int) -> int:
    """Bytes that n elements of dtype take on the device."""
    if dtype in BLOCK_TYPES:
        elems, nbytes = BLOCK_TYPES[dtype]
        if n % elems:
            raise ValueError(f"{n} elements is not a whole number of {dtype} blocks of {elems}")
        if dtype in D_AT:
            return -(-n // (elems * SUPERBLOCK)) * nbytes * SUPERBLOCK
        return n // elems * nbytes
    return n * ELEM_BYTES[dtype]


def to_device_layout(dtype: str, raw: np.ndarray) -> np.ndarray:
    """GGUF block bytes (uint8, whole blocks) as the device stores them."""
    if dtype not in D_AT:
        return raw
    size, at = BLOCK_TYPES[dtype][1], D_AT[dtype]
    blocks = raw.reshape(-1, size)
    n_super = -(-blocks.shape[0] // SUPERBLOCK)
    padded = np.zeros((n_super * SUPERBLOCK, size), np.uint8)
    padded[:blocks.shape[0]] = blocks
    supers = padded.reshape(n_super, SUPERBLOCK, size)
    rest = np.concatenate([supers[:, :, :at], supers[:, :, at + 2:]], axis=2)
    return np.concatenate([rest.reshape(n_super, -1), supers[:, :, at:at + 2].reshape(n_super, -1)],
                          axis=1).reshape(-1)


def from_device_layout(dtype: str, stored: np.ndarray, n: int) -> np.ndarray:
    """The GGUF block bytes of n elements from their device layout (to_device_layout's inverse)."""
    if dtype not in D_AT:
        return stored
    elems, size = BLOCK_TYPES[dtype]
    at = D_AT[dtype]
    supers = stored.reshape(-1, SUPERBLOCK * size)
    rest = supers[:, :SUPERBLOCK * (size - 2)].reshape(-1, SUPERBLOCK, size - 2)
    d = supers[:, SUPERBLOCK * (size - 2):].reshape(-1, SUPERBLOCK, 2)
    blocks = np.concatenate([rest[:, :, :at], d, rest[:, :, at:]], axis=2)
    return blocks.reshape(-1, size)[:n // elems].reshape(-1)


NUMPY_DTYPES = {"f32": np.float32, "u32": np.uint32, "i32": np.int32, "f16": np.float16}


class Buffer:
    """One Vulkan buffer. `kind` is 'storage' (device-local), or 'host' (host-visible,
    written and read through `.view()` with no copy)."""

    def __init__(self, kp_tensor, nbytes: int, kind: str, name: str = ""):
        self.kt = kp_tensor
        self.nbytes = nbytes
        self.kind = kind
        self.name = name

    def view(self) -> np.ndarray:
        """Zero-copy uint32 view of a host buffer's mapped memory."""
        assert self.kind == "host", "only host buffers are mapped"
        return self.kt.data().view(np.uint32)

    def __repr__(self):
        return f"Buffer({self.name or id(self)}, {self.kind}, {self.nbytes} B)"


def contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Tensor:
    """A view: `offset` and `strides` count elements of `dtype` from the buffer's start."""
    buf: Buffer
    shape: tuple
    dtype: str = "f32"
    offset: int = 0
    strides: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.strides is None:
            object.__setattr__(self, "strides", contiguous_strides(self.shape))

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def elem_bytes(self) -> int:
        return ELEM_BYTES[self.dtype]

    @property
    def contiguous(self) -> bool:
        return all(s == c for n, s, c in zip(self.shape, self.strides, contiguous_strides(self.shape))
                   if n != 1)

    @property
    def nbytes(self) -> int:
        """Bytes of a contiguous tensor's data."""
        return nbytes_of(self.dtype, self.numel)

    @property
    def byte_offset(self) -> int:
        return nbytes_of(self.dtype, self.offset)

    @property
    def word_offset(self) -> int:
        """Offset in 32-bit words; only for tensors that start on a word boundary."""
        assert self.byte_offset % 4 == 0, f"{self} does not start on a 4-byte boundary"
        return self.byte_offset // 4

    def reshape(self, *shape) -> "Tensor":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if -1 in shape:
            known = prod(n for n in shape if n != -1)
            shape = tuple(self.numel // known if n == -1 else n for n in shape)
        if prod(shape) != self.numel:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        if not self.contiguous:
            raise ValueError("reshape of a non-contiguous view: make it contiguous first (ops.copy)")
        return Tensor(self.buf, shape, self.dtype, self.offset)

    def slice(self, axis: int, start: int, stop: int) -> "Tensor":
        """Rows start..stop along `axis`: a view, contiguous only when axis is the outermost."""
        axis %= self.ndim
        if not 0 <= start <= stop <= self.shape[axis]:
            raise ValueError(f"slice {start}:{stop} out of range for axis {axis} of {self.shape}")
        shape = list(self.shape)
        shape[axis] = stop - start
        return Tensor(self.buf, tuple(shape), self.dtype, self.offset + start * self.strides[axis],
                      self.strides)

    def transpose(self, a: int = -2, b: int = -1) -> "Tensor":
        shape, strides = list(self.shape), list(self.strides)
        shape[a], shape[b] = shape[b], shape[a]
        strides[a], strides[b] = strides[b], strides[a]
        return Tensor(self.buf, tuple(shape), self.dtype, self.offset, tuple(strides))

    def __getitem__(self, i: int) -> "Tensor":
        """Index the outermost axis."""
        if not 0 <= i < self.shape[0]:
            raise IndexError(i)
        return Tensor(self.buf, self.shape[1:], self.dtype, self.offset + i * self.strides[0],
                      self.strides[1:])

    def __repr__(self):
        c = "" if self.contiguous else f", strides={self.strides}"
        return f"Tensor({self.dtype}{list(self.shape)} @{self.buf.name or id(self.buf)}+{self.offset}{c})"


def require(cond: bool, msg: str):
    """Shape/contiguity checks in op wrappers raise ValueError with a message naming the op."""
    if not cond:
        raise ValueError(msg)


def check_tensor(op: str, name: str, t: Tensor, *, dtype=None, shape=None, contiguous=True):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, str) else tuple(dtype)
        require(t.dtype in allowed, f"{op}: {name} has dtype {t.dtype}, expected {'/'.join(allowed)}")
    if shape is not None:
        require(len(shape) == t.ndim and all(s is None or s == n for s, n in zip(shape, t.shape)),
                f"{op}: {name} has shape {t.shape}, expected {tuple('*' if s is None else s for s in shape)}")
    if contiguous:
        require(t.contiguous, f"{op}: {name} {t} is not contiguous; insert ops.copy() first")


def output(g, op: str, out: "Tensor | None", shape, dtype: str = "f32") -> "Tensor":
    """An op's output: a new tensor of `shape`, or `out` checked to be one."""
    if out is None:
        return g.dev.empty(tuple(shape), dtype)
    check_tensor(op, "out", out, dtype=dtype, shape=tuple(shape))
    return out
