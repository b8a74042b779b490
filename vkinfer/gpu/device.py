"""The Vulkan device: a kp Manager, its limits, buffers, uploads and downloads.

Weights and state live in device-local `storage` buffers; data goes in and out through one
reusable host-visible staging window and a copy shader (kp's storage tensors cannot be the
target of a transfer)."""
import logging
import os
from math import ceil

import numpy as np

from ..errors import VkInferError
from .tensor import (BLOCK_TYPES, SUPERBLOCKS, Buffer, Tensor, from_device_layout, nbytes_of,
                     to_device_layout)
from .vulkan_info import DeviceInfo, query_devices

log = logging.getLogger("vkinfer")
SUBGROUP_FEATURE_VOTE, SUBGROUP_FEATURE_ARITHMETIC, SUBGROUP_FEATURE_BALLOT = 0x2, 0x4, 0x8
SUBGROUP_FEATURE_SHUFFLE = 0x10
STAGING_BYTES = int(os.environ.get("VKINFER_STAGING_MB", "16")) << 20


def _kp():
    import kp
    return kp


def choose_device_index(device=None) -> int:
    """--device, else VKINFER_DEVICE, else 0. Accepts an index or part of a device name."""
    want = device if device is not None else os.environ.get("VKINFER_DEVICE")
    if want is None or want == "":
        return 0
    devices = query_devices()
    if str(want).isdigit():
        idx = int(want)
        if idx >= len(devices):
            raise VkInferError(f"device {idx} does not exist; `vkinfer devices` lists "
                               f"{len(devices)} device(s)")
        return idx
    matches = [d.index for d in devices if str(want).lower() in d.name.lower()]
    if not matches:
        names = ", ".join(f"{d.index}: {d.name}" for d in devices)
        raise VkInferError(f"no Vulkan device matches '{want}' (devices: {names})")
    return matches[0]


class Device:
    def __init__(self, device=None):
        kp = _kp()
        self.index = choose_device_index(device)
        infos = query_devices()
        self.info: DeviceInfo = infos[self.index] if self.index < len(infos) else DeviceInfo(self.index, "?")
        self.mgr = kp.Manager(self.index)
        override = os.environ.get("VKINFER_MAX_BINDING_BYTES")
        limit = self.info.max_storage_buffer_range
        self.max_binding_bytes = min(limit, int(override)) if override else limit
        # vkinfer's kp patch adds a compute->compute barrier to every dispatch; with a stock kp
        # the graph falls back to OpTensorSyncLocal between dependent dispatches (kompute.md).
        self.kp_barrier_fix = bool(getattr(kp, "vkinfer_compute_barrier", 0))
        if not self.kp_barrier_fix:
            log.warning("kp was built without vkinfer's barrier fix (run ./setup.sh to rebuild it); "
                        "using the slower OpTensorSyncLocal barriers")
        # Subgroup arithmetic (optional in Vulkan 1.1) selects the faster reduction variants;
        # VKINFER_NO_SUBGROUPS=1 turns them off (tests cover both paths).
        self.subgroup_arithmetic = bool(self.info.subgroup_operations & SUBGROUP_FEATURE_ARITHMETIC) \
            and not os.environ.get("VKINFER_NO_SUBGROUPS")
        vote_ballot = SUBGROUP_FEATURE_VOTE | SUBGROUP_FEATURE_BALLOT
        self.subgroup_vote_ballot = self.info.subgroup_operations & vote_ballot == vote_ballot \
            and not os.environ.get("VKINFER_NO_SUBGROUPS")
        # On a CPU device (lavapipe) the matmuls run the LANE kernels (a tile of rows and tokens
        # per invocation, wide loads), on other devices the team/tiled ones (shaders/matmul.comp);
        # attention runs attend_rows there, attend elsewhere (shaders/attention.comp).
        # llvmpipe loads even an address all SIMD lanes share once per lane, so on a CPU device
        # the LANE matmuls and the scan share such loads among a subgroup's invocations with
        # shuffles (shaders/include/share_loads.glsl): load_share invocations, the
        # subgroup size, 1 for no sharing. The LANE kernels also load in 64-bit words
        # (shaders/include/wide_loads.glsl), so they need shaderInt64, which vkinfer's kp patch
        # enables where the device has it. A CPU device without either runs the GPU kernels.
        shuffle = bool(self.info.subgroup_operations & SUBGROUP_FEATURE_SHUFFLE)
        self.int64 = self.info.shader_int64 and bool(getattr(kp, "vkinfer_int64", 0))
        self.lane_kernels = self.info.device_type == "cpu" and shuffle and self.int64
        self.load_share = self.info.subgroup_size if self.lane_kernels and self.info.subgroup_size in (2, 4, 8) \
            and not os.environ.get("VKINFER_NO_SUBGROUPS") else 1
        # vkinfer's kp patch also lets a dispatch set its grid, so one algorithm (one pipeline,
        # compiled once: ~0.16 s for a prompt kernel on lavapipe) serves every batch shape.
        self.grid_per_dispatch = hasattr(kp.Algorithm, "set_workgroup")
        self._algos = {}
        self._staging = None
        self.allocated_bytes = 0

    @property
    def name(self) -> str:
        return self.info.name

    # ---- buffers -------------------------------------------------------------------------
    def buffer(self, nbytes: int, kind: str = "storage", name: str = "") -> Buffer:
        """A new buffer of at least `nbytes` (rounded up to whole 16-byte units)."""
        kp = _kp()
        if kind not in ("storage", "host"):
            raise ValueError(f"buffer kind must be storage or host, not {kind}")
        if nbytes > self.max_binding_bytes:
            raise VkInferError(f"buffer '{name}' of {nbytes} bytes exceeds the device's binding limit "
                               f"of {self.max_binding_bytes} bytes; split it by rows")
        nwords = max(4, ceil(nbytes / 16) * 4)
        if kind == "storage":
            kp_type = kp.TensorTypes.storage if self.kp_barrier_fix else kp.TensorTypes.device
        else:
            kp_type = kp.TensorTypes.host
        kt = self.mgr.tensor_t(np.zeros(nwords, np.uint32), kp_type)
        self.allocated_bytes += nwords * 4
        return Buffer(kt, nwords * 4, kind, name)

    def empty(self, shape, dtype: str = "f32", kind: str = "storage", name: str = "") -> Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = int(np.prod(shape)) if shape else 1
        return Tensor(self.buffer(nbytes_of(dtype, n), kind, name), shape, dtype)

    def zeros(self, shape, dtype: str = "f32", kind: str = "storage", name: str = "") -> Tensor:
        t = self.empty(shape, dtype, kind, name)
        self.fill(t, 0)
        return t

    def upload(self, array: np.ndarray, dtype: str | None = None, kind: str = "storage",
               name: str = "") -> Tensor:
        """A new tensor holding `array` (f32/u32/i32/f16 numpy arrays; dtype='bf16' for
        uint16 arrays of bfloat16 bits)."""
        dtype = dtype or _dtype_of(array)
        t = self.empty(array.shape, dtype, kind, name)
        self.write(t, array)
        return t

    # ---- moving data -----------------------------------------------------------------------
    def staging(self) -> Buffer:
        if self._staging is None:
            self._staging = self.buffer(min(STAGING_BYTES, self.max_binding_bytes // 16 * 16), "host",
                                        "staging")
        return self._staging

    def write(self, t: Tensor, array: np.ndarray):
        """Copy `array` into the contiguous tensor `t`, through the staging window for storage."""
        if not t.contiguous:
            raise ValueError(f"write: {t} is not contiguous")
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if t.dtype in BLOCK_TYPES:
            if t.offset % (BLOCK_TYPES[t.dtype][0] * SUPERBLOCKS.get(t.dtype, 1)):
                raise ValueError(f"write: {t} does not start on a {t.dtype} superblock")
            raw = to_device_layout(t.dtype, raw)
        if raw.size != t.nbytes:
            raise ValueError(f"write: {raw.size} bytes for {t} ({t.nbytes} bytes)")
        self.write_bytes(t.buf, t.byte_offset, raw)

    def write_bytes(self, buf: Buffer, byte_offset: int, raw: np.ndarray):
        if byte_offset % 4:
            raise ValueError("writes must start on a 4-byte boundary")
        tail = raw.size % 4
        if tail:   # pad only the last word, never copy the whole array
            last = np.zeros(4, np.uint8)
            last[:tail] = raw[raw.size - tail:]
            if raw.size > tail:
                self.write_bytes(buf, byte_offset, raw[:raw.size - tail])
            self.write_bytes(buf, byte_offset + raw.size - tail, last)
            return
        words = raw.view(np.uint32)
        if buf.kind == "host":
            buf.view()[byte_offset // 4: byte_offset // 4 + words.size] = words
            return
        window = self.staging().nbytes // 4
        for start in range(0, words.size, window):
            chunk = words[start:start + window]
            self.staging().view()[:chunk.size] = chunk
            self.copy_words(self.staging(), 0, buf, byte_offset // 4 + start, chunk.size)

    def read(self, t: Tensor) -> np.ndarray:
        """The contents of a contiguous tensor as a numpy array (bf16 comes back as float32,
        block types as their raw bytes)."""
        if not t.contiguous:
            raise ValueError(f"read: {t} is not contiguous")
        nbytes = t.nbytes
        start_word, skip = divmod(t.byte_offset, 4)
        nwords = ceil((skip + nbytes) / 4)
        raw = self.read_words(t.buf, start_word, nwords).view(np.uint8)[skip:skip + nbytes]
        if t.dtype in BLOCK_TYPES:
            return from_device_layout(t.dtype, raw, t.numel).copy()
        if t.dtype == "bf16":
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
        return raw.view(_numpy_dtype(t.dtype)).reshape(t.shape).copy()

    def read_words(self, buf: Buffer, word_offset: int, nwords: int) -> np.ndarray:
        if buf.kind == "host":
            return buf.view()[word_offset:word_offset + nwords].copy()
        out = np.empty(nwords, np.uint32)
        window = self.staging().nbytes // 4
        for start in range(0, nwords, window):
            n = min(window, nwords - start)
            self.copy_words(buf, word_offset + start, self.staging(), 0, n)
            out[start:start + n] = self.staging().view()[:n]
        return out

    def copy_words(self, src: Buffer, src_word: int, dst: Buffer, dst_word: int, nwords: int):
        from .graph import Graph
        g = Graph(self, "copy")
        g.dispatch("copy_words", [src], [dst], [src_word, dst_word, nwords], groups=ceil(nwords / 256))
        g.run()

    def fill(self, t: Tensor, value: float | int):
        """Set every word of a contiguous 4-byte tensor (or a whole buffer) to `value`."""
        from .graph import Graph
        bits = np.float32(value).view(np.uint32) if t.dtype == "f32" else np.uint32(value)
        n = ceil(t.nbytes / 4)
        g = Graph(self, "fill")
        g.dispatch("fill_words", [], [t.buf], [t.word_offset, n, int(bits)], groups=ceil(n / 256))
        g.run()

    # ---- kp algorithms -----------------------------------------------------------------------
    def algorithm(self, kernel: str, buffers: list, groups: tuple, spec: tuple, n_push: int):
        """A kp Algorithm for this kernel bound to these buffers, cached, with its grid set to
        `groups` for the dispatch recorded next. kp binds buffers (and, stock, the grid) at
        creation, so each distinct combination is one pipeline."""
        from .kernels import spirv
        key = (kernel, tuple(id(b) for b in buffers), None if self.grid_per_dispatch else groups, spec, n_push)
        entry = self._algos.get(key)
        if entry is None:
            algo = self.mgr.algorithm([b.kt for b in buffers], spirv(kernel), list(groups),
                                      np.array(spec, np.uint32), np.zeros(n_push, np.uint32))
            entry = self._algos[key] = (algo, buffers)   # keep buffers alive as long as the pipeline
        if self.grid_per_dispatch:
            entry[0].set_workgroup(*groups)
        return entry[0]

    def close(self):
        self._algos.clear()
        self._staging = None
        self.mgr.destroy()


def _dtype_of(array: np.ndarray) -> str:
    for name, dt in (("f32", np.float32), ("u32", np.uint32), ("i32", np.int32), ("f16", np.float16)):
        if array.dtype == dt:
            return name
    raise ValueError(f"no vkinfer dtype for numpy {array.dtype}; pass dtype= explicitly")


def _numpy_dtype(dtype: str):
    return {"f32": np.float32, "u32": np.uint32, "i32": np.int32, "f16": np.float16}[dtype]
