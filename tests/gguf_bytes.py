"""Byte-level edits of a GGUF file, for malformed-file tests: change, add or drop one metadata
record, or overwrite a field of a tensor-info record in place. The data section is re-padded after
the edited header, so every other tensor stays valid and only the edit is wrong. Values are given
as raw GGUF encodings (u32(), string(), array()), so any type can be put under any key."""
import struct
from pathlib import Path

from vkinfer.gguf import GGUFTable

# GGUF value type ids
UINT8, INT8, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = 0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12


def u32(v):
    return UINT32, struct.pack("<I", v)


def i32(v):
    return INT32, struct.pack("<i", v)


def u64(v):
    return UINT64, struct.pack("<Q", v)


def f32(v):
    return FLOAT32, struct.pack("<f", v)


def encode_string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def string(s):
    return STRING, encode_string(s.encode() if isinstance(s, str) else s)


def array(item_type, payload: bytes, n: int):
    """An array of n items of item_type whose encodings are `payload`."""
    return ARRAY, struct.pack("<IQ", item_type, n) + payload


class Editor:
    """The layout of one valid GGUF file and edits of its bytes (each returns new bytes)."""

    def __init__(self, path):
        self.path = Path(path)
        self.data = self.path.read_bytes()
        self.table = GGUFTable(self.path)
        self.fields = self.table.fields
        self.tensors = {t.name: t for t in self.table.tensors}

    def _rebuild(self, header: bytes, alignment=None) -> bytes:
        t = self.table
        pad = -len(header) % (alignment or t.alignment)
        return header + bytes(pad) + self.data[t.data_offset:]

    def _header(self):
        return self.data[:self.table.info_end]

    def set_kv(self, key, value) -> bytes:
        """Replace key's type and value with value = (type id, encoded bytes)."""
        f = self.fields[key]
        vtype, raw = value
        head = self._header()
        record = head[f.offset:f.value_offset - 4] + struct.pack("<I", vtype) + raw
        return self._rebuild(head[:f.offset] + record + head[f.end:])

    def drop_kv(self, key) -> bytes:
        f = self.fields[key]
        head = self._header()
        return self._rebuild(self._kv_count(head[:f.offset], -1) + head[f.end:])

    def add_kv(self, key, value, name: bytes = None, alignment=None) -> bytes:
        """A new record at the end of the metadata (the key as raw bytes with `name`); the data
        section padded to `alignment` when given."""
        vtype, raw = value
        record = encode_string(name if name is not None else key.encode()) + struct.pack("<I", vtype) + raw
        at = self._infos_start()
        head = self._header()
        return self._rebuild(self._kv_count(head[:at], +1) + record + head[at:], alignment)

    def _infos_start(self) -> int:
        infos = [t.info_offset for t in self.table.tensors]
        return min(infos) if infos else self.table.info_end

    @staticmethod
    def _kv_count(head: bytes, delta: int) -> bytes:
        n = struct.unpack_from("<Q", head, 16)[0]
        return head[:16] + struct.pack("<Q", n + delta) + head[24:]

    # tensor-info records: byte positions of their fields
    def tensor_fields(self, name) -> dict:
        at = self.tensors[name].info_offset
        n_name = struct.unpack_from("<Q", self.data, at)[0]
        n_dims_at = at + 8 + n_name
        n_dims = struct.unpack_from("<I", self.data, n_dims_at)[0]
        type_at = n_dims_at + 4 + 8 * n_dims
        return {"name_len": at, "name": at + 8, "n_dims": n_dims_at, "dims": n_dims_at + 4,
                "type": type_at, "offset": type_at + 4}

    def poke(self, at: int, fmt: str, *values) -> bytes:
        """Overwrite the bytes at `at` with struct.pack(fmt, *values), in place (same length)."""
        out = bytearray(self.data)
        struct.pack_into(fmt, out, at, *values)
        return bytes(out)

    def set_tensor(self, name, field, fmt, *values) -> bytes:
        return self.poke(self.tensor_fields(name)[field], fmt, *values)
