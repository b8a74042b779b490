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


# Device layouts of the block types (shaders/include/quant_*.glsl read them). A layout keeps the
# GGUF bytes, but for a last superblock padded with zero blocks; it only moves bytes (and bits)
# so that each 32-element chunk's quants are whole aligned words: one uvec4 of 4-bit quants and
# at most a word or two of high bits.
# * A nibble chunk is 16 bytes: byte 4c + b holds element 4c + b of the chunk in its low nibble
#   and element 16 + 4c + b in its high one (Q4_0's own order).
# * A 1-bit plane is one word: bit 8b + 4h + c is bit 4 of element 16h + 4c + b.
# * A 2-bit plane is two words: word h, bits 8b + 2c and 8b + 2c + 1, hold bits 4-5 of element
#   16h + 4c + b.
# A superblock type stores SUPERBLOCKS[dtype] blocks field by field: the first field of each
# block, then the second of each, ...; the other types transform their blocks' fields in place.
# The legacy types put their scales first: so laid out, matrices larger than the CPU's cache read
# about twice as fast on llvmpipe (bench/RESULTS.md, eighth sitting; measured, not explained).
#   Q8_0  8 x d, 8 x 32 quants                                    (68 words)
#   Q4_0  8 x d, 8 nibble chunks                                  (36 words)
#   Q4_1  8 x (d, m), 8 nibble chunks                             (40 words)
#   Q5_0  8 x d, 8 1-bit planes, 8 nibble chunks                  (44 words)
#   Q5_1  8 x (d, m), 8 nibble chunks, 8 1-bit planes             (48 words)
# (Q5_0 and Q5_1 order their planes as measured fastest; the other order was 2x slower for Q5_0
# and 1.3x for Q5_1.)
#   Q6_K  8 x d, 8 bodies; a body is the 16 scales, then 4 times: nibble chunks 2k and 2k + 1,
#         their 2-bit planes (each chunk's bits within 48 bytes)                  (420 words)
#   Q2_K  8 x 8 2-bit planes (the quants), 8 x the 16 scale bytes, 8 x (d, dmin)  (168 words)
#   Q3_K  8 x 8 2-bit planes (low bits), 8 x 8 1-bit planes (hmask), 8 x the 12 scale bytes,
#         8 x d                                                   (220 words)
#   Q4_K  2 x (d, dmin, the 12 scale bytes), 2 x 8 nibble chunks   (72 words)
#   Q5_K  2 x (d, dmin, the 12 scale bytes), 2 x 8 1-bit planes, 2 x 8 nibble chunks (88 words)
# (Q4_K and Q5_K in pairs of blocks so that each pair of chunks is one aligned 32-byte unit: the
# CPU-device kernels load two chunks at once, shaders/include/nibbles.glsl.)
SUPERBLOCKS = {"q8_0": 8, "q4_0": 8, "q4_1": 8, "q5_0": 8, "q5_1": 8, "q2_k": 8, "q3_k": 8, "q4_k": 2,
               "q5_k": 2, "q6_k": 8}

_M0F, _MF0 = np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(0xF0F0F0F0F0F0F0F0)
_M01, _M03 = np.uint32(0x01010101), np.uint32(0x03030303)


def _words(field: np.ndarray, dtype=np.uint32) -> np.ndarray:
    return np.ascontiguousarray(field).view(dtype)


def _nibble_chunks(field: np.ndarray) -> np.ndarray:
    """[N, 32k] bytes, each 32 holding two chunks (low nibbles one, high nibbles the next:
    Q4_K's and Q6_K's order) <-> the two nibble chunks. Its own inverse."""
    q = _words(field, np.uint64).reshape(len(field), -1, 4)
    lo, hi = q[:, :, :2], q[:, :, 2:]
    out = np.concatenate([(lo & _M0F) | ((hi & _M0F) << np.uint64(4)),
                          ((lo >> np.uint64(4)) & _M0F) | (hi & _MF0)], axis=2)
    return out.view(np.uint8).reshape(field.shape)


def _q5k_planes(field: np.ndarray) -> np.ndarray:
    """Q5_K's qh[32] (bit j of qh[l]: bit 4 of element l of chunk j) <-> 8 1-bit planes: an
    8 x 8 bit transpose in each byte lane, so its own inverse."""
    w = _words(field)
    out = np.zeros_like(w)
    for j in range(8):
        for k in range(8):
            out[:, j] |= ((w[:, k] >> np.uint32(j)) & _M01) << np.uint32(k)
    return out.view(np.uint8)


def _q5_plane(field: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Q5_0's / Q5_1's qh (bit i of the u32: element i) <-> a 1-bit plane."""
    w = _words(field)
    out = np.zeros_like(w)
    for i in range(32):
        src, dst = i, 8 * (i % 4) + i // 4
        if inverse:
            src, dst = dst, src
        out |= ((w >> np.uint32(src)) & np.uint32(1)) << np.uint32(dst)
    return out.view(np.uint8)


def _two_bit_planes(field: np.ndarray, inverse: bool = False) -> np.ndarray:
    """[N, 64] bytes whose byte 32n + l holds, in bits 2p and 2p + 1, two bits of element l of
    chunk 4n + p (Q6_K's qh, Q2_K's and Q3_K's qs) <-> 8 2-bit planes."""
    n = len(field)
    out = np.zeros((n, 2, 4, 2) if not inverse else (n, 2, 2, 4), np.uint32)
    w = _words(field).reshape((n, 2, 2, 4) if not inverse else (n, 2, 4, 2))
    for p in range(4):
        for c in range(4):
            if not inverse:      # w: n, h, c (l = 16h + 4c + b); out: n, p, h
                out[:, :, p, :] |= ((w[:, :, :, c] >> np.uint32(2 * p)) & _M03) << np.uint32(2 * c)
            else:
                out[:, :, :, c] |= ((w[:, :, p, :] >> np.uint32(2 * c)) & _M03) << np.uint32(2 * p)
    return out.view(np.uint8).reshape(n, 64)


# A Q6_K body's bytes from those of (8 nibble chunks, 8 2-bit planes, 16 scales): the scales,
# then per pair of chunks their nibbles and their planes.
_Q6_BODY_ORDER = np.concatenate([np.arange(192, 208)] + [
    np.concatenate([np.arange(32 * k, 32 * k + 32), np.arange(128 + 16 * k, 128 + 16 * k + 16)])
    for k in range(4)])


def _q6_body(field: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The 208 bytes before d of a Q6_K block <-> a body. GGUF's ql[64n + 32s + l] holds, in
    nibble H, element l of chunk 4n + 2H + s; qh its 2-bit planes' bits."""
    n = len(field)
    if inverse:
        field = field[:, np.argsort(_Q6_BODY_ORDER)]
    ql, out = field[:, :128], np.array(field)
    if not inverse:
        chunks = _nibble_chunks(ql).reshape(n, 2, 2, 2, 16)             # n, s, H, bytes
        out[:, :128] = chunks.transpose(0, 1, 3, 2, 4).reshape(n, 128)    # chunk 4n + 2H + s
    else:
        chunks = ql.reshape(n, 2, 2, 2, 16).transpose(0, 1, 3, 2, 4)     # n, H, s -> n, s, H
        out[:, :128] = _nibble_chunks(chunks.reshape(n, 128))
    out[:, 128:192] = _two_bit_planes(field[:, 128:192], inverse)
    return out if inverse else out[:, _Q6_BODY_ORDER]


# dtype -> the fields (start, stop, (forward, inverse) or None) of a GGUF block, in device order.
_NIBBLES = (_nibble_chunks, _nibble_chunks)
_PLANE = (_q5_plane, lambda f: _q5_plane(f, inverse=True))
_PLANES2 = (_two_bit_planes, lambda f: _two_bit_planes(f, inverse=True))
_PLANES1 = (_q5k_planes, _q5k_planes)
FIELDS = {
    "q8_0": [(0, 2, None), (2, 34, None)],
    "q4_0": [(0, 2, None), (2, 18, None)],
    "q4_1": [(0, 4, None), (4, 20, None)],
    "q5_0": [(0, 2, None), (2, 6, _PLANE), (6, 22, None)],
    "q5_1": [(0, 4, None), (8, 24, None), (4, 8, _PLANE)],
    "q4_k": [(0, 16, None), (16, 144, _NIBBLES)],
    "q5_k": [(0, 16, None), (16, 48, _PLANES1), (48, 176, _NIBBLES)],
    "q2_k": [(16, 80, _PLANES2), (0, 16, None), (80, 84, None)],
    "q3_k": [(32, 96, _PLANES2), (0, 32, _PLANES1), (96, 108, None), (108, 110, None)],
    "q6_k": [(208, 210, None), (0, 208, (_q6_body, lambda f: _q6_body(f, inverse=True)))],
}


def nbytes_of(dtype: str, n: int) -> int:
    """Bytes that n elements of dtype take on the device."""
    if dtype in BLOCK_TYPES:
        elems, nbytes = BLOCK_TYPES[dtype]
        if n % elems:
            raise ValueError(f"{n} elements is not a whole number of {dtype} blocks of {elems}")
        per = SUPERBLOCKS.get(dtype, 1)
        return -(-n // (elems * per)) * nbytes * per
    return n * ELEM_BYTES[dtype]


def to_device_layout(dtype: str, raw: np.ndarray) -> np.ndarray:
    """GGUF block bytes (uint8, whole blocks) as the device stores them."""
    if dtype not in FIELDS:
        return raw
    size, per = BLOCK_TYPES[dtype][1], SUPERBLOCKS.get(dtype, 1)
    blocks = raw.reshape(-1, size)
    n_super = -(-blocks.shape[0] // per)
    if n_super * per != blocks.shape[0]:
        padded = np.zeros((n_super * per, size), np.uint8)
        padded[:blocks.shape[0]] = blocks
        blocks = padded
    fields = []
    for start, stop, transform in FIELDS[dtype]:
        field = blocks[:, start:stop]
        fields.append((transform[0](field) if transform else field).reshape(n_super, -1))
    return np.concatenate(fields, axis=1).reshape(-1)


def from_device_layout(dtype: str, stored: np.ndarray, n: int) -> np.ndarray:
    """The GGUF block bytes of n elements from their device layout (to_device_layout's inverse)."""
    if dtype not in FIELDS:
        return stored
    elems, size = BLOCK_TYPES[dtype]
    per = SUPERBLOCKS.get(dtype, 1)
    supers = stored.reshape(-1, per * size)
    blocks = np.empty((supers.shape[0] * per, size), np.uint8)
    at = 0
    for start, stop, transform in FIELDS[dtype]:
        field = supers[:, at:at + per * (stop - start)].reshape(-1, stop - start)
        blocks[:, start:stop] = transform[1](field) if transform else field
        at += per * (stop - start)
    return blocks[:n // elems].reshape(-1)


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
