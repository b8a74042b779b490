"""GGUF file -> typed hyper-parameters and a checked tensor table.

The file is parsed by vkinfer's own reader over a memory map (`GGUFTable`), which checks every
count, length and offset against the file's size before it allocates or loops: a corrupt count
of 2^40 is one error line, not a 8 TiB allocation. Each failure is one VkInferError line naming
the file and the key or tensor; every check runs before anything is uploaded.

Strings: metadata keys and tensor names must be UTF-8 (a name that is not is a corrupt file).
String *values* that are not UTF-8 (a vocabulary token, a model name) are decoded with U+FFFD
for the bad bytes, with a warning: llama.cpp keeps GGUF strings as bytes and its tokenizer
decodes them the same way (unicode_cpts_from_utf8), so such files run there and run here.
Tensor data must be laid out as llama.cpp requires: each tensor at a multiple of
general.alignment, in one gap-free sequence from the start of the data section, each taking
exactly the bytes its type and shape need (padded to the alignment). A tensor whose data
overlaps another, is misaligned, or is followed by bytes no tensor owns (an F32 tensor labelled
F16) is refused by name.
"""
import logging
import math
import os
import struct
from dataclasses import dataclass, field, fields
from math import prod
from pathlib import Path

import numpy as np

from .errors import VkInferError

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4                      # GGML_MAX_DIMS
MAX_PARAM = (1 << 31) - 1         # hyper-parameters reach the shaders as 32-bit words


class GGUFError(VkInferError):
    pass


@dataclass
class TensorInfo:
    name: str
    type: str                 # GGML type name: "F32", "Q4_K", ...
    shape: tuple              # numpy order (ggml ne reversed)
    nbytes: int
    data: np.ndarray          # raw bytes, memory-mapped (uint8, or the reader's typed view)

    def raw(self) -> np.ndarray:
        return self.data.reshape(-1).view(np.uint8)

    def dequantize(self) -> np.ndarray:
        """The values as float32 in numpy shape (block types decoded by gguf-py); for numpy
        executors and tests, never for uploads."""
        if self.type in ("F32", "F16"):
            return np.asarray(self.data, np.float32).reshape(self.shape)
        import gguf
        qtype = gguf.GGMLQuantizationType[self.type]
        return gguf.quants.dequantize(self.raw().reshape(*self.shape[:-1], -1), qtype) \
            .astype(np.float32).reshape(self.shape)


# ---- hyper-parameters and expected tensors (each architecture's are in vkinfer/models/<arch>.py) --
def param(name, default=None, lo=1, standard=True):
    """A hyper-parameter field: `name` is the GGUF key after '<arch>.'. Integers must be at least
    `lo` (and at most MAX_PARAM); floats must be finite and above 0. standard=False: a key that
    llama.cpp's tools do not write (vkinfer reads it when present; synth leaves it out)."""
    return field(metadata={"key": name, "default": default, "lo": lo, "standard": standard})


class OptionalShape(tuple):
    """The shape of an expected tensor that may be absent (checked when present)."""


# ---- the container: a bounded reader ------------------------------------------------------------
# GGUF value types: scalar type id -> (struct format, numpy dtype); 8 is a string, 9 an array.
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "|b1"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
            12: ("<d", "<f8")}
STRING, ARRAY, BOOL = 8, 9, 7
INT_TYPES, FLOAT_TYPES = frozenset((0, 1, 2, 3, 4, 5, 10, 11)), frozenset((6, 12))
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# Smallest encodings, to check a count against the bytes left before believing it.
_MIN_KV_BYTES = 8 + 4 + 1           # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


def _type_name(t: int) -> str:
    from gguf.constants import GGUFValueType
    return GGUFValueType(t).name


@dataclass
class Field:
    """One metadata key, as gguf-py's ReaderField shows it: `types` is [type] or [ARRAY, item
    type] (gguf.GGUFValueType); contents() is the value (strings decoded, arrays as lists)."""
    name: str
    offset: int               # where the key's record starts in the file
    types: list
    value_offset: int         # where its value starts
    end: int                  # where the record ends
    payload: object           # scalar value; (start, length) of a string; numpy view of a scalar
                              # array; (starts, lengths) of a string array
    mem: memoryview = field(repr=False, default=None)     # the file
    file: str = ""

    def contents(self):
        """The value: Python scalars, str (bad UTF-8 as U+FFFD, with a warning), lists."""
        if self.types[0] == STRING:
            return _decode(self.mem, [self.payload[0]], [self.payload[1]], self)[0]
        if self.types[0] == ARRAY:
            if self.types[1] == STRING:
                return _decode(self.mem, self.payload[0].tolist(), self.payload[1].tolist(), self)
            return self.payload.tolist()
        return self.payload

    def describe(self) -> str:
        """'a STRING', 'a UINT32', 'an array of 3 INT32'."""
        if self.types[0] == ARRAY:
            n = len(self.payload[0]) if self.types[1] == STRING else len(self.payload)
            return f"an array of {n} {_type_name(self.types[1])}"
        name = _type_name(self.types[0])
        return f"{'an' if name.startswith('I') else 'a'} {name}"


@dataclass
class RawTensor:
    """A tensor-info record, as gguf-py's ReaderTensor: shape in ggml order (ne), data a view."""
    name: str
    tensor_type: object       # gguf.GGMLQuantizationType
    shape: np.ndarray
    n_elements: int
    n_bytes: int
    data_offset: int          # absolute, in the file
    data: np.ndarray
    info_offset: int = 0      # where its tensor-info record starts


class GGUFTable:
    """The metadata and the tensor table of a GGUF file, read over a memory map. Every length
    and count is checked against the bytes left in the file before it is used, so a corrupt file
    costs at most time and memory in proportion to its size."""

    def __init__(self, path: Path):
        self.path, self.name = path, path.name
        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 4 or head[:4] != b"GGUF":
            raise GGUFError(f"{self.name}: not a GGUF file (bad magic {head[:4]!r}, expected b'GGUF')")
        version = int.from_bytes(head[4:8], "little")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{self.name}: unsupported GGUF version {version} "
                            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
        self.size = os.path.getsize(path)
        if self.size < 24:
            raise GGUFError(f"{self.name}: truncated: {self.size} bytes is too short for a GGUF header")
        self.data = np.memmap(path, mode="r")
        self._mem = memoryview(self.data)
        self.pos = 0
        self.fields: dict[str, Field] = {}
        self.tensors: list[RawTensor] = []
        self.alignment = 32
        self._read_header()

    # -- primitive reads, each bounded by the file size
    def _fail(self, what: str):
        raise GGUFError(f"{self.name}: truncated or corrupt GGUF file: {what} (the file has "
                        f"{self.size} bytes)")

    def _take(self, n: int, what: str) -> int:
        at = self.pos
        if n < 0 or at + n > self.size:
            self._fail(f"{what} at byte {at} needs {n} bytes")
        self.pos = at + n
        return at

    def _u32(self, what: str) -> int:
        return _U32.unpack_from(self._mem, self._take(4, what))[0]

    def _u64(self, what: str) -> int:
        return _U64.unpack_from(self._mem, self._take(8, what))[0]

    def _count(self, what: str, min_bytes: int) -> int:
        """A u64 count of items that take at least min_bytes each, checked against the rest."""
        n = self._u64(what)
        left = self.size - self.pos
        if n * min_bytes > left:
            self._fail(f"{what} = {n} at byte {self.pos - 8} cannot fit in the {left} bytes left")
        return n

    def _string(self, what: str) -> tuple:
        n = self._u64(f"{what} length")
        return self._take(n, what), n

    def _name(self, what: str) -> str:
        """A key or tensor name: UTF-8 or the file is corrupt."""
        at, n = self._string(what)
        try:
            return str(self._mem[at:at + n], "utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.name}: corrupt GGUF file: the {what} at byte {at} is not valid "
                            f"UTF-8 ({bytes(self._mem[at:at + min(n, 40)])!r})") from None

    # -- the file
    def _read_header(self):
        from gguf.constants import GGUFValueType
        self._u32("magic")
        version = self._u32("version")
        n_tensors = self._u64("tensor count")
        n_kv = self._count("metadata key count", _MIN_KV_BYTES)
        if n_tensors * _MIN_TENSOR_INFO_BYTES > self.size - self.pos:
            self._fail(f"tensor count = {n_tensors} cannot fit in the {self.size - self.pos} bytes "
                       "left after the header")
        for key, value, at, end in (("GGUF.version", version, 4, 8), ("GGUF.tensor_count", n_tensors, 8, 16),
                                    ("GGUF.kv_count", n_kv, 16, 24)):
            t = GGUFValueType.UINT32 if key == "GGUF.version" else GGUFValueType.UINT64
            self.fields[key] = Field(key, at, [t], at, end, value)
        for _ in range(n_kv):
            self._read_kv()
        align = self.fields.get("general.alignment")
        if align is not None:
            if align.types != [GGUFValueType.UINT32]:
                raise GGUFError(f"{self.name}: metadata key general.alignment is {align.describe()}, "
                                "expected a UINT32")
            self.alignment = int(align.payload)
            if self.alignment == 0 or self.alignment & (self.alignment - 1):
                raise GGUFError(f"{self.name}: general.alignment = {self.alignment} is not a power of 2")
        infos = [self._read_tensor_info() for _ in range(n_tensors)]
        self.info_end = self.pos
        self.data_offset = -(-self.pos // self.alignment) * self.alignment
        self._place_tensors(infos)

    def _read_kv(self):
        from gguf.constants import GGUFValueType
        start = self.pos
        key = self._name("metadata key")
        if key in self.fields:
            raise GGUFError(f"{self.name}: corrupt GGUF file: metadata key {key} appears twice")
        vtype = self._u32(f"type of metadata key {key}")
        value_at = self.pos
        types, payload = [vtype], None
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype][0]
            payload = struct.unpack_from(fmt, self._mem, self._take(struct.calcsize(fmt), key))[0]
        elif vtype == STRING:
            payload = self._string(f"value of {key}")
        elif vtype == ARRAY:
            itype = self._u32(f"item type of metadata key {key}")
            types.append(itype)
            if itype in _SCALARS:
                dtype = np.dtype(_SCALARS[itype][1])
                n = self._count(f"length of {key}", dtype.itemsize)
                payload = np.frombuffer(self._mem, dtype, n, self._take(n * dtype.itemsize, key))
            elif itype == STRING:
                payload = self._string_array(key, self._count(f"length of {key}", 8))
            elif itype == ARRAY:
                raise GGUFError(f"{self.name}: metadata key {key} is an array of arrays, which GGUF "
                                "readers (llama.cpp's included) do not support")
            else:
                raise GGUFError(f"{self.name}: metadata key {key} is an array of unknown GGUF type "
                                f"{itype}")
        else:
            raise GGUFError(f"{self.name}: metadata key {key} has unknown GGUF type {vtype}")
        types = [GGUFValueType(t) for t in types]
        self.fields[key] = Field(key, start, types, value_at, self.pos, payload, self._mem, self.name)

    def _string_array(self, key: str, n: int) -> tuple:
        starts, lengths = np.empty(n, np.int64), np.empty(n, np.int64)
        mem, size, pos = self._mem, self.size, self.pos
        unpack = _U64.unpack_from
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                self._fail(f"string {i} of {key} at byte {pos} needs 8 bytes")
            length = unpack(mem, pos)[0]
            pos += 8
            if length > size - pos:
                self.pos = pos
                self._fail(f"string {i} of {key} at byte {pos} needs {length} bytes")
            starts[i], lengths[i] = pos, length
            pos += length
        self.pos = pos
        return starts, lengths

    def _read_tensor_info(self) -> tuple:
        start = self.pos
        name = self._name("tensor name")
        n_dims = self._u32(f"dimension count of tensor {name}")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"{self.name}: tensor {name} has {n_dims} dimensions (GGUF allows at "
                            f"most {MAX_DIMS})")
        dims = [self._u64(f"dimensions of tensor {name}") for _ in range(n_dims)]
        type_id = self._u32(f"type of tensor {name}")
        offset = self._u64(f"data offset of tensor {name}")
        return name, dims, type_id, offset, start

    def _place_tensors(self, infos: list):
        """Types, sizes and the data layout, checked; then the tensors as views."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        name, align = self.name, self.alignment
        placed, seen = [], set()
        for tname, dims, type_id, offset, info_at in infos:
            if tname in seen:
                raise GGUFError(f"{name}: corrupt GGUF file: two tensors are named {tname}")
            seen.add(tname)
            try:
                qtype = GGMLQuantizationType(type_id)
            except ValueError:
                raise GGUFError(f"{name}: tensor {tname} has type id {type_id}, which is not a GGML "
                                "type this version of gguf-py knows (file from a newer llama.cpp?)") \
                    from None
            block, block_bytes = GGML_QUANT_SIZES[qtype]
            if dims and dims[0] % block:
                raise GGUFError(f"{name}: tensor {tname} has rows of {dims[0]} values, not a multiple "
                                f"of the {block}-value blocks of type {qtype.name}")
            n_elements = prod(dims)
            n_bytes = n_elements // block * block_bytes
            if offset % align:
                raise GGUFError(f"{name}: tensor {tname}: data offset {offset} is not a multiple of "
                                f"the alignment ({align} bytes)")
            start = self.data_offset + offset
            if start + n_bytes > self.size:
                raise GGUFError(f"{name}: truncated: tensor {tname} ends at byte {start + n_bytes} but "
                                f"the file has {self.size} bytes")
            placed.append((offset, n_bytes, tname, qtype, dims, info_at))
        self._check_layout(placed)
        for offset, n_bytes, tname, qtype, dims, info_at in placed:
            self.tensors.append(self._tensor_view(tname, qtype, dims, offset, n_bytes, info_at))

    def _check_layout(self, placed: list):
        """One gap-free run of tensors from offset 0, each padded to the alignment."""
        name, align = self.name, self.alignment
        expected, previous = 0, None
        for offset, n_bytes, tname, qtype, dims, _ in sorted(placed, key=lambda p: (p[0], p[1])):
            if offset < expected:
                raise GGUFError(f"{name}: tensor {tname}'s data (bytes {offset}..{offset + n_bytes} of "
                                f"the data section) overlaps tensor {previous[2]}'s "
                                f"({previous[0]}..{previous[0] + previous[1]})")
            if offset > expected:
                if previous is None:
                    raise GGUFError(f"{name}: tensor {tname}'s data starts {offset} bytes into the "
                                    "data section, after bytes no tensor owns")
                raise GGUFError(f"{name}: tensor {previous[2]} ({previous[3].name}, "
                                f"{list(reversed(previous[4]))}) takes {previous[1]} bytes, but "
                                f"{offset - previous[0]} lie before the next tensor's data: its type "
                                "or shape does not match its data")
            expected = offset + -(-n_bytes // align) * align
            previous = (offset, n_bytes, tname, qtype, dims)
        if previous is not None and self.size > self.data_offset + expected:
            raise GGUFError(f"{name}: tensor {previous[2]} ({previous[3].name}, "
                            f"{list(reversed(previous[4]))}) takes {previous[1]} bytes, but the file "
                            f"has {self.size - self.data_offset - previous[0]} after its start: its "
                            "type or shape does not match its data")

    def _tensor_view(self, tname, qtype, dims, offset, n_bytes, info_at) -> RawTensor:
        from gguf.quants import quant_shape_to_byte_shape
        np_dims = tuple(reversed(dims))
        typed = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
                 "I16": np.int16, "I32": np.int32, "I64": np.int64}.get(qtype.name)
        start = self.data_offset + offset
        if typed is not None:
            data = np.frombuffer(self._mem, typed, prod(dims), start)
        else:
            data = np.frombuffer(self._mem, np.uint8, n_bytes, start)
            np_dims = quant_shape_to_byte_shape(np_dims, qtype) if dims else ()
        return RawTensor(tname, qtype, np.array(dims, np.uint64), prod(dims), n_bytes, start,
                         data.reshape(np_dims), info_at)


def _decode(mem, starts, lengths, f: Field) -> list:
    out, bad = [], 0
    for a, n in zip(starts, lengths):
        raw = mem[a:a + n]
        try:
            out.append(str(raw, "utf-8"))
        except UnicodeDecodeError:
            out.append(str(raw, "utf-8", "replace"))
            bad += 1
    if bad:
        what = f"{bad} of the strings in {f.name} are" if f.types[0] == ARRAY else f"{f.name} is"
        log.warning("%s: %s not valid UTF-8; the bad bytes read as U+FFFD (as llama.cpp reads "
                    "them)", f.file, what)
    return out


# ---- the file -----------------------------------------------------------------------------------
# Keys whose GGUF type every reader relies on: checked when the file opens, so callers of get()
# can trust them. kind: "str", "int", "float", "bool", or "[kind]" for an array.
KNOWN_KEYS = {
    "general.architecture": "str", "general.name": "str", "general.size_label": "str",
    "general.file_type": "int", "general.quantization_version": "int",
    "tokenizer.ggml.model": "str", "tokenizer.ggml.pre": "str", "tokenizer.ggml.tokens": "[str]",
    "tokenizer.ggml.token_type": "[int]", "tokenizer.ggml.merges": "[str]",
    "tokenizer.ggml.scores": "[float]", "tokenizer.ggml.bos_token_id": "int",
    "tokenizer.ggml.eos_token_id": "int", "tokenizer.ggml.eot_token_id": "int",
    "tokenizer.ggml.unknown_token_id": "int", "tokenizer.ggml.padding_token_id": "int",
    "tokenizer.ggml.add_bos_token": "bool", "tokenizer.chat_template": "str",
}
_KIND_TYPES = {"str": {STRING}, "int": INT_TYPES, "float": FLOAT_TYPES | INT_TYPES, "bool": {BOOL}}
_KIND_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a bool"}
_MISSING = object()


class GGUFFile:
    """A checked GGUF file. `tensors` maps names to TensorInfo; `arch` and `params` are set for
    model files (weights=True), the metadata is always there. `reader` is the GGUFTable (fields
    and tensors as gguf-py's reader names them)."""

    def __init__(self, path, weights: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            raise GGUFError(f"{path}: no such file")
        if self.path.is_dir():
            raise GGUFError(f"{path}: is a directory, not a GGUF file")
        self.reader = GGUFTable(self.path)
        self.file_size = self.reader.size
        for key, kind in KNOWN_KEYS.items():
            if key in self.reader.fields:
                self._check_type(key, kind)
        self.tensors: dict[str, TensorInfo] = {}
        for t in self.reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            self.tensors[t.name] = TensorInfo(t.name, t.tensor_type.name, shape, int(t.n_bytes), t.data)
        self.arch = self.get("general.architecture")
        self.params = None
        if weights:
            self._check_model()

    # metadata
    def get(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def value(self, key: str, kind: str, default=_MISSING):
        """The value of `key`, which must be of `kind` ("int", "float", "bool", "str", or
        "[int]" etc. for an array); a missing key gives `default`, or an error without one."""
        f = self.reader.fields.get(key)
        if f is None:
            if default is _MISSING:
                raise GGUFError(f"{self.path.name}: missing metadata key {key}")
            return default
        self._check_type(key, kind)
        return f.contents()

    def _check_type(self, key: str, kind: str):
        f = self.reader.fields[key]
        array = kind.startswith("[")
        item = kind.strip("[]")
        ok = (f.types[0] == ARRAY) == array and f.types[-1] in _KIND_TYPES[item]
        if not ok:
            want = f"an array of {_KIND_NAMES[item].split()[1]}s" if array else _KIND_NAMES[item]
            raise GGUFError(f"{self.path.name}: metadata key {key} is {f.describe()}, expected {want}")

    def require(self, key: str):
        v = self.get(key)
        if v is None:
            raise GGUFError(f"{self.path.name}: missing metadata key {key}")
        return v

    @property
    def n_vocab(self) -> int:
        return self.tensors["token_embd.weight"].shape[0]

    def _check_model(self):
        from .models import ARCHITECTURES
        name = self.path.name
        if self.arch is None:
            raise GGUFError(f"{name}: missing metadata key general.architecture")
        if self.arch not in ARCHITECTURES:
            raise GGUFError(f"{name}: architecture '{self.arch}' is not supported "
                            f"(supported: {', '.join(ARCHITECTURES)})")
        cls = ARCHITECTURES[self.arch]
        self.params = self._params(cls.Params)
        for t in self.tensors.values():
            if t.type not in SUPPORTED_TYPES:
                raise GGUFError(f"{name}: tensor {t.name} has type {t.type}, which vkinfer does not "
                                f"support (supported: {', '.join(SUPPORTED_TYPES)})")
        embd = self.tensors.get("token_embd.weight")
        if embd is None:
            raise GGUFError(f"{name}: missing tensor token_embd.weight")
        if len(embd.shape) != 2 or embd.shape[0] < 1:
            raise GGUFError(f"{name}: tensor token_embd.weight has shape {list(embd.shape)}, expected "
                            "[n_vocab, embedding_length] with at least one row")
        cls.check_file(self)
        for tname, shape in cls.expected_tensors(self.params, self.n_vocab).items():
            t = self.tensors.get(tname)
            if t is None:
                if not isinstance(shape, OptionalShape):
                    raise GGUFError(f"{name}: missing tensor {tname}")
                continue
            if len(shape) != len(t.shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
                raise GGUFError(f"{name}: tensor {tname} has shape {list(t.shape)}, expected "
                                f"{['*' if s is None else s for s in shape]}")

    def _params(self, cls):
        values = {}
        for f in fields(cls):
            key = f"{self.arch}.{f.metadata['key']}"
            kind = {int: "int", float: "float", bool: "bool"}[f.type]
            v = self.value(key, kind, f.metadata["default"])
            if v is None:
                raise GGUFError(f"{self.path.name}: missing metadata key {key}")
            v = f.type(v)
            if kind == "int" and not f.metadata["lo"] <= v <= MAX_PARAM:
                raise GGUFError(f"{self.path.name}: {key} = {v} is impossible (it must be "
                                f"{f.metadata['lo']}..{MAX_PARAM})")
            if kind == "float" and not (math.isfinite(v) and v > 0):
                raise GGUFError(f"{self.path.name}: {key} = {v} is impossible (it must be a finite "
                                "number above 0)")
            values[f.name] = v
        p = cls(**values)
        if p.n_layers > len(self.tensors):
            raise GGUFError(f"{self.path.name}: {self.arch}.block_count = {p.n_layers} but the file has "
                            f"only {len(self.tensors)} tensors")
        return p

    # sizes
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def bytes_by_type(self) -> dict:
        out = {}
        for t in self.tensors.values():
            n, b = out.get(t.type, (0, 0))
            out[t.type] = (n + 1, b + t.nbytes)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))

    def n_params(self) -> int:
        return sum(prod(t.shape) for t in self.tensors.values())


def open_gguf(path, weights: bool = True) -> GGUFFile:
    return GGUFFile(path, weights)
