"""GGUF file -> typed hyper-parameters and a checked tensor table, on gguf-py's memory-mapped
reader. Every check runs before anything is uploaded; each failure is one VkInferError line
naming the file and the key or tensor."""
import os
from dataclasses import dataclass, field, fields
from math import prod
from pathlib import Path

import numpy as np

from .errors import VkInferError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_VERSIONS = (2, 3)


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


# ---- hyper-parameters -------------------------------------------------------------------------
def _key(*names):
    """Metadata field: first name is the GGUF key after '<arch>.'; default in names[1] if any."""
    return field(metadata={"key": names[0], "default": names[1] if len(names) > 1 else None})


@dataclass
class MambaParams:
    n_embd: int = _key("embedding_length")
    n_layer: int = _key("block_count")
    d_conv: int = _key("ssm.conv_kernel")
    d_inner: int = _key("ssm.inner_size")
    d_state: int = _key("ssm.state_size")
    dt_rank: int = _key("ssm.time_step_rank")
    eps: float = _key("attention.layer_norm_rms_epsilon", 1e-5)
    dt_b_c_rms: bool = _key("ssm.dt_b_c_rms", False)
    n_ctx_train: int = _key("context_length", 1 << 20)

    def state_bytes(self, n_ctx: int) -> int:
        return 4 * self.n_layer * self.d_inner * (self.d_conv - 1 + self.d_state)


@dataclass
class ZayaParams:
    n_block: int = _key("block_count")
    n_embd: int = _key("embedding_length")
    n_head: int = _key("attention.head_count")
    n_head_kv: int = _key("attention.head_count_kv")
    head_dim: int = _key("attention.key_length")
    value_dim: int = _key("attention.value_length")
    n_rot: int = _key("rope.dimension_count")
    rope_theta: float = _key("rope.freq_base")
    d_conv: int = _key("ssm.conv_kernel")
    n_expert: int = _key("expert_count")
    n_expert_used: int = _key("expert_used_count", 1)
    n_ff_expert: int = _key("feed_forward_length")
    n_router: int = _key("expert_feed_forward_length")
    eps: float = _key("attention.layer_norm_rms_epsilon", 1e-5)
    n_ctx_train: int = _key("context_length", 4096)

    @property
    def n_qk(self) -> int:
        return (self.n_head + self.n_head_kv) * self.head_dim

    def state_bytes(self, n_ctx: int) -> int:
        n_cca = self.n_block // 2
        kv = 2 * n_ctx * self.n_head_kv * self.head_dim * 4
        return n_cca * (kv + 4 * (2 * self.n_qk + self.n_embd))


ARCHITECTURES = {"mamba": MambaParams, "zaya": ZayaParams}

# Tensor names written by early drafts of the ZAYA converter (zaya1.md §2.4) -> final names.
ZAYA_ALIASES = {
    "cca_conv_dw.weight": "ssm_conv1d.weight", "cca_conv_dw_b.bias": "ssm_conv1d.bias",
    "zaya_router_down.weight": "ffn_gate_inp.weight", "zaya_router_down_b.bias": "ffn_gate_inp.bias",
    "zaya_router_norm.weight": "ffn_norm.weight", "zaya_router_mlp0.weight": "ffn_gate.weight",
    "zaya_router_mlp0_b.bias": "ffn_gate.bias", "zaya_router_mlp2_b.bias": "zaya_router_mlp2.bias",
    "res_scale_hs_b.bias": "res_scale_hs.bias", "res_scale_res_b.bias": "res_scale_res.bias",
}


# ---- expected tensors ---------------------------------------------------------------------------
def mamba_tensors(p: MambaParams, n_vocab: int) -> dict:
    """name -> numpy shape; None marks an optional tensor (shape checked when present)."""
    d, di = p.n_embd, p.d_inner
    want = {"token_embd.weight": (n_vocab, d), "output_norm.weight": (d,),
            "output.weight": None}
    for i in range(p.n_layer):
        b = f"blk.{i}."
        want.update({
            b + "attn_norm.weight": (d,), b + "ssm_in.weight": (2 * di, d),
            b + "ssm_conv1d.weight": (di, p.d_conv), b + "ssm_conv1d.bias": (di,),
            b + "ssm_x.weight": (p.dt_rank + 2 * p.d_state, di),
            b + "ssm_dt.weight": (di, p.dt_rank), b + "ssm_dt.bias": (di,),
            b + "ssm_a": (di, p.d_state), b + "ssm_d": (di,), b + "ssm_out.weight": (d, di)})
    return want


def zaya_tensors(p: ZayaParams, n_vocab: int) -> dict:
    d, dh, r, e = p.n_embd, p.head_dim, p.n_router, p.n_expert
    want = {"token_embd.weight": (n_vocab, d), "output_norm.weight": (d,)}
    for s in ("res_scale_hs", "res_scale_res"):
        want.update({f"{s}.weight": (d,), f"{s}.bias": (d,)})
    for i in range(p.n_block):
        b = f"blk.{i}."
        want.update({b + "attn_norm.weight": (d,), b + "res_scale_hs.weight": (d,),
                     b + "res_scale_hs.bias": (d,)})
        if i > 0:
            want.update({b + "res_scale_res.weight": (d,), b + "res_scale_res.bias": (d,)})
        if i % 2 == 0:
            want.update({
                b + "attn_q.weight": (p.n_head * dh, d), b + "attn_k.weight": (p.n_head_kv * dh, d),
                b + "cca_val_proj1.weight": (p.n_head_kv * p.value_dim // 2, d),
                b + "cca_val_proj2.weight": (p.n_head_kv * p.value_dim // 2, d),
                b + "ssm_conv1d.weight": (p.n_qk, p.d_conv), b + "ssm_conv1d.bias": None,
                b + "cca_conv_grp.weight": (p.n_qk, dh, None), b + "cca_conv_grp.bias": (p.n_qk,),
                b + "cca_k_scale.weight": (p.n_head_kv,),
                b + "attn_output.weight": (d, p.n_head * p.value_dim)})
        else:
            want.update({
                b + "ffn_gate_inp.weight": (r, d), b + "ffn_gate_inp.bias": (r,),
                b + "ffn_norm.weight": (r,), b + "ffn_gate.weight": (r, r), b + "ffn_gate.bias": (r,),
                b + "zaya_router_mlp2.weight": (r, r), b + "zaya_router_mlp2.bias": (r,),
                b + "zaya_router_mlp4.weight": (e + 1, r), b + "zaya_router_biases.weight": (e + 1,),
                b + "ffn_gate_up_exps.weight": (e, 2 * p.n_ff_expert, d),
                b + "ffn_down_exps.weight": (e, d, p.n_ff_expert)})
            if i > 1:
                want[b + "zaya_router_eda.weight"] = (r,)
    return want


EXPECTED_TENSORS = {"mamba": mamba_tensors, "zaya": zaya_tensors}


# ---- the file -----------------------------------------------------------------------------------
class GGUFFile:
    """A checked GGUF file. `tensors` maps names to TensorInfo; `arch` and `params` are set for
    model files (weights=True), the metadata is always there."""

    def __init__(self, path, weights: bool = True):
        self.path = Path(path)
        name = self.path.name
        if not self.path.exists():
            raise GGUFError(f"{path}: no such file")
        if self.path.is_dir():
            raise GGUFError(f"{path}: is a directory, not a GGUF file")
        with open(self.path, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[:4] != b"GGUF":
            raise GGUFError(f"{name}: not a GGUF file (bad magic {head[:4]!r}, expected b'GGUF')")
        version = int.from_bytes(head[4:8], "little")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{name}: unsupported GGUF version {version} "
                            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
        self.reader = _read(self.path)
        self.file_size = os.path.getsize(self.path)
        self.tensors: dict[str, TensorInfo] = {}
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > self.file_size:
                raise GGUFError(f"{name}: truncated: tensor {t.name} ends at byte {end} but the file "
                                f"has {self.file_size} bytes")
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            self.tensors[t.name] = TensorInfo(t.name, t.tensor_type.name, shape, int(t.n_bytes), t.data)
        self.arch = self.get("general.architecture")
        self.params = None
        if weights:
            self._check_model()

    # metadata
    def get(self, key: str, default=None):
        if key in self.reader.string_arrays:
            return self.reader.strings(key)
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def require(self, key: str):
        v = self.get(key)
        if v is None:
            raise GGUFError(f"{self.path.name}: missing metadata key {key}")
        return v

    @property
    def n_vocab(self) -> int:
        return self.tensors["token_embd.weight"].shape[0]

    def _check_model(self):
        name = self.path.name
        if self.arch is None:
            raise GGUFError(f"{name}: missing metadata key general.architecture")
        if self.arch not in ARCHITECTURES:
            raise GGUFError(f"{name}: architecture '{self.arch}' is not supported "
                            f"(supported: {', '.join(ARCHITECTURES)})")
        self.params = self._params(ARCHITECTURES[self.arch])
        if self.arch == "zaya":
            self._check_zaya_layout()
        for t in self.tensors.values():
            if t.type not in SUPPORTED_TYPES:
                raise GGUFError(f"{name}: tensor {t.name} has type {t.type}, which vkinfer does not "
                                f"support (supported: {', '.join(SUPPORTED_TYPES)})")
        if "token_embd.weight" not in self.tensors:
            raise GGUFError(f"{name}: missing tensor token_embd.weight")
        self._check_consistency()
        for tname, shape in EXPECTED_TENSORS[self.arch](self.params, self.n_vocab).items():
            t = self.tensors.get(tname)
            if t is None:
                if shape is not None and not tname.endswith("ssm_conv1d.bias"):
                    raise GGUFError(f"{name}: missing tensor {tname}")
                continue
            if shape is not None and (len(shape) != len(t.shape) or
                                      any(s is not None and s != n for s, n in zip(shape, t.shape))):
                raise GGUFError(f"{name}: tensor {tname} has shape {list(t.shape)}, expected "
                                f"{['*' if s is None else s for s in shape]}")

    def _params(self, cls):
        values = {}
        for f in fields(cls):
            key = f"{self.arch}.{f.metadata['key']}"
            v = self.get(key, f.metadata["default"])
            if v is None:
                raise GGUFError(f"{self.path.name}: missing metadata key {key}")
            values[f.name] = f.type(v) if f.type in (int, float, bool) else v
        return cls(**values)

    def _check_zaya_layout(self):
        name = self.path.name
        for old, new in ZAYA_ALIASES.items():
            for tname in [n for n in self.tensors if n.endswith(old)]:
                renamed = tname[: -len(old)] + new
                self.tensors[renamed] = self.tensors.pop(tname)
                self.tensors[renamed].name = renamed
        if self.params.n_block % 2 or "blk.1.ffn_gate_inp.weight" not in self.tensors:
            raise GGUFError(f"{name}: this ZAYA1 GGUF uses a {self.params.n_block}-block layout "
                            "with CCA and MoE in the same block (a third-party fork's format); vkinfer "
                            "reads the llama.cpp draft's layout (even blocks CCA, odd blocks MoE). "
                            "Convert the model with that draft's convert_hf_to_gguf.py.")

    def _check_consistency(self):
        name, p = self.path.name, self.params
        if self.arch == "mamba":
            ssm_in = self.tensors.get("blk.0.ssm_in.weight")
            if ssm_in is not None and ssm_in.shape[0] != 2 * p.d_inner:
                raise GGUFError(f"{name}: mamba.ssm.inner_size = {p.d_inner} but blk.0.ssm_in.weight "
                                f"has {ssm_in.shape[0]} rows (expected 2 x inner_size)")
        if self.arch == "zaya":
            vocab = self.get("zaya.vocab_size")
            if p.n_head % p.n_head_kv:
                raise GGUFError(f"{name}: zaya.attention.head_count {p.n_head} is not a multiple "
                                f"of head_count_kv {p.n_head_kv}")
            if vocab is not None and int(vocab) < self.n_vocab:
                raise GGUFError(f"{name}: zaya.vocab_size = {vocab} but token_embd.weight has "
                                f"{self.n_vocab} rows")

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


def _fast_reader_class():
    """gguf-py's reader makes one numpy view per array element, which takes ~15 s and ~200 MB
    for a 262k-token vocabulary. This subclass reads an array of scalars as one view, and
    records an array of strings as (offsets, lengths) in `string_arrays`, decoded on request
    by GGUFFile.get()."""
    import gguf
    from gguf import GGUFValueType

    class FastReader(gguf.GGUFReader):
        def __init__(self, path):
            self.string_arrays = {}
            self._strings = None
            super().__init__(path)

        def _get_field_parts(self, orig_offs, raw_type):
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            offs, n = orig_offs + 12, int(alen[0])
            itype = GGUFValueType(raw_itype[0])
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                values = self._get(offs, nptype, n)
                return 12 + int(values.nbytes), [raw_itype, alen, values], [2], \
                    [GGUFValueType.ARRAY, itype]
            if itype != GGUFValueType.STRING:
                return super()._get_field_parts(orig_offs, raw_type)
            mem = memoryview(self.data)
            starts, lengths = np.empty(n, np.int64), np.empty(n, np.int64)
            for i in range(n):
                length = int.from_bytes(mem[offs:offs + 8], "little")
                starts[i], lengths[i] = offs + 8, length
                offs += 8 + length
            self._strings = (starts, lengths)
            return offs - orig_offs, [raw_itype, alen], [], [GGUFValueType.ARRAY, itype]

        def _push_field(self, field, skip_sum=False):
            if self._strings is not None:
                self.string_arrays[field.name] = self._strings
                self._strings = None
            return super()._push_field(field, skip_sum)

        def strings(self, key: str) -> list[str]:
            mem = memoryview(self.data)
            starts, lengths = self.string_arrays[key]
            return [str(mem[a:a + n], "utf-8") for a, n in zip(starts.tolist(), lengths.tolist())]

    return FastReader


def _read(path: Path):
    try:
        return _fast_reader_class()(path)
    except ValueError as e:
        msg = str(e)
        if "GGMLQuantizationType" in msg:
            type_id = msg.split()[0]
            raise GGUFError(f"{path.name}: a tensor has type id {type_id}, which is not a GGML type "
                            "this version of gguf-py knows (file from a newer llama.cpp?)") from None
        if "cannot reshape" in msg:
            raise GGUFError(f"{path.name}: truncated: the file ends at byte {os.path.getsize(path)}, "
                            "before the tensor data its header describes") from None
        raise GGUFError(f"{path.name}: truncated or corrupt GGUF header, {os.path.getsize(path)} bytes "
                        f"({msg})") from None
    except (IndexError, OverflowError, UnicodeDecodeError, KeyError) as e:
        raise GGUFError(f"{path.name}: truncated or corrupt GGUF header, {os.path.getsize(path)} bytes "
                        f"({type(e).__name__}: {e})") from None


def open_gguf(path, weights: bool = True) -> GGUFFile:
    return GGUFFile(path, weights)


def memory_estimate(f: GGUFFile, n_ctx: int, n_batch: int = 32) -> dict:
    """Device bytes a model needs: weights as stored, per-sequence state (KV cache for ZAYA at
    n_ctx), and scratch for a prompt micro-batch of n_batch tokens (activations + logits)."""
    p = f.params
    widest = max(max(t.shape) for t in f.tensors.values() if len(t.shape) >= 2 and t.name != "token_embd.weight")
    scratch = 4 * n_batch * (8 * widest + f.n_vocab)
    out = {"weights": f.weight_bytes(), "state": p.state_bytes(n_ctx), "scratch": scratch}
    out["total"] = sum(out.values())
    return out
