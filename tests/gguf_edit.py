"""Rewrite a GGUF file with gguf-py's writer: drop tensors, replace tensors or metadata. Tests use
it to make malformed files and model variants from the real fixtures."""
import gguf
import numpy as np

from vkinfer.gguf import open_gguf


def rewrite_gguf(src, dst, drop=(), tensors=None, fields=None, arch=None):
    """tensors: name -> (numpy data, ggml type name) replacing or adding a tensor;
    fields: key -> value (same type as before) or None to delete the key."""
    tensors, fields = tensors or {}, fields or {}
    f = open_gguf(src, weights=False)
    r = f.reader
    w = gguf.GGUFWriter(dst, arch or r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key == "general.alignment":
            continue
        if key in fields and fields[key] is None:
            continue
        value = fields.get(key, f.get(key))
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, field.types[0], sub)
    done = set()
    for t in r.tensors:
        if t.name in drop:
            continue
        if t.name in tensors:
            data, qtype = tensors[t.name]
            _add(w, t.name, data, qtype)
        else:
            _add(w, t.name, np.asarray(t.data), t.tensor_type.name)
        done.add(t.name)
    for name, (data, qtype) in tensors.items():
        if name not in done:
            _add(w, name, data, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add(w, name, data, qtype):
    qt = gguf.GGMLQuantizationType[qtype]
    if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        w.add_tensor(name, data)
    else:   # block types (and BF16) as uint8 bytes shaped [..., bytes per row]
        w.add_tensor(name, data.view(np.uint8), raw_dtype=qt)
