"""`vkinfer convert HF_DIR -o OUT.gguf`: a Hugging Face checkpoint directory to GGUF.

Supported: `MambaForCausalLM` and `FalconMambaForCausalLM`, written in llama.cpp's `mamba` layout
(the tensor names, shapes, types and metadata keys `convert_hf_to_gguf.py` writes): `A` stored as
`-exp(A_log)`, the conv weight squeezed to [d_inner, d_conv], the token list padded to a
multiple of `pad_vocab_size_multiple` (8), `mamba.ssm.dt_b_c_rms` true for Falcon-Mamba, a tied
`lm_head` left out, 1-D tensors, norms, `ssm_a`, `ssm_d` and the conv weight in F32 and the
other matrices in the output type (at `q8_0`, as llama.cpp: Q8_0 where a row is whole 32-weight
blocks, quantized with gguf-py's reference quantize_row_q8_0 a row chunk at a time, else F16 —
Mamba-1's ssm_dt of dt_rank columns). `Mamba2ForCausalLM` is written in llama.cpp's `mamba2` layout:
`ssm_a` = -exp(A_log) and `ssm_d` as [n_heads, 1], the gated norm as [n_groups, d_inner / n_groups],
`dt_bias` as `ssm_dt.bias`, `ssm.time_step_rank` = the head count (d_inner / head_dim),
`ssm.group_count` = n_groups, the vocabulary padded to a multiple of 16, `lm_head` left out when
`tie_word_embeddings` is set.

It streams: the safetensors files are memory-mapped and every tensor is read, converted and
written on its own (the output array of one tensor is the only large allocation), so a model
much larger than memory converts. The output is written to a temporary name next to OUT and
renamed at the end; an error leaves no OUT behind (and removes the temporary file).

The tokenizer comes from `tokenizer.json` (byte-level BPE as `tokenizer.ggml.model = gpt2`,
the pre-tokenizer recognised from its `pre_tokenizer` and `normalizer` sections), the
special-token ids, `add_bos`/`add_eos` and the chat template from `tokenizer_config.json`
(or `chat_template.jinja`) through gguf-py's SpecialVocab.
"""
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

from .errors import VkInferError

log = logging.getLogger(__name__)

ARCHITECTURES = ("MambaForCausalLM", "FalconMambaForCausalLM", "Mamba2ForCausalLM")
# HF architecture -> GGUF general.architecture
GGUF_ARCH = {"MambaForCausalLM": "mamba", "FalconMambaForCausalLM": "mamba",
             "Mamba2ForCausalLM": "mamba2"}
OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
_QK8_0, _Q8_0_BLOCK = 32, 34      # Q8_0: 32 weights per block, an f16 scale + 32 int8

# safetensors dtype -> numpy dtype of its stored elements (BF16 read as uint16 bit patterns)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_CHUNK_BYTES = 16 << 20     # convert large tensors this many input bytes at a time


# ---- reading the checkpoint -------------------------------------------------------------------
class _Source:
    """One tensor of a safetensors file: its dtype and shape from the safetensors package, its
    bytes memory-mapped (numpy has no bfloat16, so the data is read through the file's offsets
    rather than through safetensors' numpy loader)."""

    def __init__(self, name, path, dtype, shape, start, end):
        self.name, self.path, self.dtype, self.shape = name, path, dtype, tuple(shape)
        self.start, self.end = start, end

    @property
    def nbytes(self):
        return self.end - self.start

    def raw(self) -> np.ndarray:
        """The stored elements, memory-mapped (read-only), in the stored shape."""
        if self.dtype not in _ST_DTYPES:
            raise VkInferError(f"{self.path.name}: tensor {self.name} has dtype {self.dtype}, "
                               "which vkinfer convert does not read")
        dt = np.dtype(_ST_DTYPES[self.dtype]).newbyteorder("<")
        count = int(np.prod(self.shape, dtype=np.int64))
        if count * dt.itemsize != self.nbytes:
            raise VkInferError(f"{self.path.name}: tensor {self.name} holds {self.nbytes} bytes, "
                               f"not the {count * dt.itemsize} its shape {list(self.shape)} needs")
        if count == 0:
            return np.zeros(self.shape, dt)
        return np.memmap(self.path, dtype=dt, mode="r", offset=self.start,
                         shape=self.shape if self.shape else (1,)).reshape(self.shape)


def _to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (np.asarray(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(raw, np.float32)


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise ValueError(f"header length {n} is not plausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise VkInferError(f"{path}: not a readable safetensors file ({e})") from None
    return header, 8 + n


def _open_part(path: Path) -> dict:
    """name -> _Source for one safetensors file, listed by the safetensors package."""
    from safetensors import safe_open
    header, data_start = _read_safetensors_header(path)
    size = path.stat().st_size
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, IndexError) as e:
        raise VkInferError(f"{path}: not a readable safetensors file (bad header: {e})") from None
    if data_start + end > size:
        raise VkInferError(f"{path}: the tensors run past the end of the file ({size} bytes, "
                           f"{data_start + end} needed): truncated download?")
    out = {}
    try:
        with safe_open(str(path), framework="np") as part:
            for name in part.keys():
                sl = part.get_slice(name)
                dtype, shape = sl.get_dtype(), sl.get_shape()
                start, end = header[name]["data_offsets"]
                out[name] = _Source(name, path, dtype, shape, data_start + start, data_start + end)
    except VkInferError:
        raise
    except Exception as e:      # safetensors raises its own SafetensorError for a bad file
        raise VkInferError(f"{path}: not a readable safetensors file ({e})") from None
    return out


def open_checkpoint(hf_dir: Path) -> dict:
    """Every tensor of the checkpoint: name -> _Source, in file order (parts sorted by name).
    With model.safetensors.index.json, the files it names, each of which must be present, and
    every tensor of its weight map must be found."""
    index_file = hf_dir / "model.safetensors.index.json"
    weight_map = None
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise VkInferError(f"{index_file}: not a safetensors index ({e})") from None
        parts = sorted(set(weight_map.values()))
        missing = [p for p in parts if not (hf_dir / p).is_file()]
        if missing:
            raise VkInferError(f"{hf_dir}: missing model files named in {index_file.name}: "
                               + ", ".join(missing))
    else:
        parts = sorted(p.name for p in hf_dir.glob("model*.safetensors") if p.is_file())
        if not parts:
            found = sorted(p.name for p in hf_dir.iterdir())
            hint = (" (only PyTorch .bin weights: vkinfer convert reads safetensors)"
                    if any(n.endswith(".bin") for n in found) else "")
            raise VkInferError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json{hint}")
    tensors = {}
    for p in parts:
        for name, src in _open_part(hf_dir / p).items():
            if name in tensors:
                raise VkInferError(f"{hf_dir}: tensor {name} is in both {tensors[name].path.name} "
                                   f"and {p}")
            tensors[name] = src
    if weight_map is not None:
        lost = sorted(n for n in weight_map if n not in tensors)
        if lost:
            raise VkInferError(f"{hf_dir}: {len(lost)} tensor(s) of {index_file.name} are in no "
                               f"file: {', '.join(lost[:5])}" + (" ..." if len(lost) > 5 else ""))
    return tensors


def load_config(hf_dir: Path) -> dict:
    if not hf_dir.is_dir():
        raise VkInferError(f"{hf_dir}: not a directory (expected a Hugging Face checkpoint "
                           "directory with config.json and safetensors files)")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise VkInferError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VkInferError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise VkInferError(f"{path}: not a JSON object")
    return config


def _hparam(config: dict, keys, default=None, *, path="config.json"):
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    if default is None:
        raise VkInferError(f"{path}: none of {', '.join(keys)} is set")
    return default


# ---- the Mamba plan ---------------------------------------------------------------------------
class _Out:
    """One output tensor: GGUF name, numpy shape (row-major, as written), kind ('w' = follows
    the output type, 'f32' = always F32), and how to make its f32 values from the sources."""

    def __init__(self, name, shape, kind, src, transform=None, pad_rows=0):
        self.name, self.shape, self.kind, self.src = name, tuple(shape), kind, src
        self.transform, self.pad_rows = transform, pad_rows
        self.qtype = None


def _neg_exp(x):
    return -np.exp(x)


def plan_mamba(config: dict, tensors: dict, hf_dir: Path) -> tuple[list, dict]:
    """(list of _Out in file order, hyper-parameters) for Mamba-1 / Falcon-Mamba; checks that
    every tensor is present with its shape and that nothing unknown is left over."""
    cfg = f"{hf_dir.name}/config.json"
    d_model = int(_hparam(config, ["hidden_size", "d_model"], path=cfg))
    n_layer = int(_hparam(config, ["num_hidden_layers", "n_layer", "n_layers", "num_layers"], path=cfg))
    d_conv = int(_hparam(config, ["conv_kernel", "d_conv"], 4))
    d_inner = int(_hparam(config, ["intermediate_size", "d_inner"], 2 * d_model))
    d_state = int(_hparam(config, ["state_size", "d_state"], 16))
    dt_rank = _hparam(config, ["time_step_rank", "dt_rank"], "auto")
    if dt_rank == "auto":
        dt_rank = -(d_model // -16)
    dt_rank = int(dt_rank)
    eps = float(_hparam(config, ["layer_norm_epsilon", "rms_norm_eps"], 1e-5))
    falcon = config.get("model_type") == "falcon_mamba" or \
        "FalconMambaForCausalLM" in (config.get("architectures") or [])
    vocab_size = int(_hparam(config, ["vocab_size"], path=cfg))
    pad = int(config.get("pad_vocab_size_multiple") or 8)
    n_vocab = -(vocab_size // -pad) * pad
    hp = dict(d_model=d_model, n_layer=n_layer, d_conv=d_conv, d_inner=d_inner, d_state=d_state,
              dt_rank=dt_rank, eps=eps, dt_b_c_rms=falcon, vocab_size=vocab_size, n_vocab=n_vocab)

    # the expected tensors: HF name -> (gguf name, HF shape, kind, transform)
    want = {}
    emb_rows = tensors["backbone.embeddings.weight"].shape[0] if "backbone.embeddings.weight" in tensors else vocab_size
    want["backbone.embeddings.weight"] = ("token_embd.weight", (emb_rows, d_model), "w", None)
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        want[m + "A_log"] = (f"blk.{i}.ssm_a", (d_inner, d_state), "f32", _neg_exp)
        want[m + "D"] = (f"blk.{i}.ssm_d", (d_inner,), "f32", None)
        want[m + "conv1d.weight"] = (f"blk.{i}.ssm_conv1d.weight", (d_inner, 1, d_conv), "f32", None)
        if config.get("use_conv_bias", True):
            want[m + "conv1d.bias"] = (f"blk.{i}.ssm_conv1d.bias", (d_inner,), "f32", None)
        want[m + "dt_proj.weight"] = (f"blk.{i}.ssm_dt.weight", (d_inner, dt_rank), "w", None)
        want[m + "dt_proj.bias"] = (f"blk.{i}.ssm_dt.bias", (d_inner,), "f32", None)
        want[m + "in_proj.weight"] = (f"blk.{i}.ssm_in.weight", (2 * d_inner, d_model), "w", None)
        want[m + "x_proj.weight"] = (f"blk.{i}.ssm_x.weight", (dt_rank + 2 * d_state, d_inner), "w", None)
        want[m + "out_proj.weight"] = (f"blk.{i}.ssm_out.weight", (d_model, d_inner), "w", None)
        if config.get("use_bias", False):
            want[m + "in_proj.bias"] = (f"blk.{i}.ssm_in.bias", (2 * d_inner,), "f32", None)
            want[m + "out_proj.bias"] = (f"blk.{i}.ssm_out.bias", (d_model,), "f32", None)
        want[p + "norm.weight"] = (f"blk.{i}.attn_norm.weight", (d_model,), "f32", None)
    want["backbone.norm_f.weight"] = ("output_norm.weight", (d_model,), "f32", None)
    optional = {"lm_head.weight": ("output.weight", (emb_rows, d_model), "w", None)}

    outs, hp["n_vocab"] = _plan_outs(want, optional, tensors, hf_dir, vocab_size, n_vocab,
                                     "Falcon-Mamba" if falcon else "Mamba", tied=_same_values)
    return outs, hp


def _plan_outs(want: dict, optional: dict, tensors: dict, hf_dir: Path, vocab_size: int,
               n_vocab: int, what: str, tied) -> tuple[list, int]:
    """The _Out list (in checkpoint order) and the padded vocabulary size for the expected
    tensors `want` and `optional` (HF name -> (gguf name, HF shape, kind, transform[, output
    shape])): every one of `want` must be there with its shape and nothing else may be;
    lm_head.weight is left out where tied(lm_head, embedding) says so. Without an output shape
    a tensor is squeezed (as llama.cpp does for Mamba-1)."""
    cfg = f"{hf_dir.name}/config.json"
    missing = [n for n in want if n not in tensors]
    if missing:
        raise VkInferError(f"{hf_dir.name}: {len(missing)} tensor(s) missing from the checkpoint: "
                           + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    unknown = [n for n in tensors if n not in want and n not in optional]
    if unknown:
        raise VkInferError(f"{hf_dir.name}: tensor(s) a {what} checkpoint does not have: "
                           + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    emb_rows = want["backbone.embeddings.weight"][1][0]
    if emb_rows < vocab_size:
        raise VkInferError(f"{hf_dir.name}: backbone.embeddings.weight has {emb_rows} rows for "
                           f"vocab_size {vocab_size}")
    n_vocab = max(n_vocab, emb_rows)
    pad_rows = n_vocab - emb_rows

    outs = []
    for name, src in tensors.items():
        spec = want.get(name) or optional.get(name)
        gname, shape, kind, fn = spec[:4]
        if src.shape != tuple(shape):
            raise VkInferError(f"{src.path.name}: tensor {name} has shape {list(src.shape)}, "
                               f"expected {list(shape)} from {cfg}")
        if src.dtype not in _FLOAT_DTYPES:
            raise VkInferError(f"{src.path.name}: tensor {name} has dtype {src.dtype}, not a float type")
        if name == "lm_head.weight" and tied(src, tensors["backbone.embeddings.weight"]):
            log.info("lm_head.weight is tied to the embedding: left out")
            continue
        out_shape = spec[4] if len(spec) > 4 else (tuple(d for d in shape if d != 1) or (1,))
        rows = pad_rows if gname in ("token_embd.weight", "output.weight") else 0
        if rows:
            out_shape = (out_shape[0] + rows, *out_shape[1:])
        outs.append(_Out(gname, out_shape, kind, src, fn, rows))
    return outs, n_vocab



def plan_mamba2(config: dict, tensors: dict, hf_dir: Path) -> tuple[list, dict]:
    """(list of _Out in file order, hyper-parameters) for Mamba-2 (transformers' Mamba2Config:
    hidden_size, expand, num_heads, head_dim, n_groups, state_size, conv_kernel), in llama.cpp's
    `mamba2` layout: in_proj = z | xBC | dt, A and D as [H, 1], the gated norm as
    [n_groups, d_inner / n_groups], dt_bias as ssm_dt.bias."""
    cfg = f"{hf_dir.name}/config.json"
    d_model = int(_hparam(config, ["hidden_size", "d_model"], path=cfg))
    n_layer = int(_hparam(config, ["num_hidden_layers", "n_layer", "n_layers", "num_layers"], path=cfg))
    d_conv = int(_hparam(config, ["conv_kernel", "d_conv"], 4))
    d_state = int(_hparam(config, ["state_size", "d_state"], 128))
    expand = _hparam(config, ["expand"], 2)
    d_inner = int(_hparam(config, ["intermediate_size", "d_inner"], int(expand * d_model)))
    head_dim = int(_hparam(config, ["head_dim"], 64))
    n_groups = int(_hparam(config, ["n_groups"], 1))
    eps = float(_hparam(config, ["layer_norm_epsilon", "rms_norm_eps"], 1e-5))
    if head_dim <= 0 or d_inner % head_dim:
        raise VkInferError(f"{cfg}: the inner size {d_inner} (expand {expand} x hidden_size "
                           f"{d_model}) is not a multiple of head_dim {head_dim}")
    n_heads = d_inner // head_dim            # llama.cpp's ssm.time_step_rank
    if config.get("num_heads") is not None and int(config["num_heads"]) != n_heads:
        raise VkInferError(f"{cfg}: num_heads {config['num_heads']} does not match inner size "
                           f"{d_inner} / head_dim {head_dim} = {n_heads}")
    if n_groups <= 0 or n_heads % n_groups:
        raise VkInferError(f"{cfg}: n_groups {n_groups} does not divide the {n_heads} heads")
    if config.get("use_bias"):
        raise VkInferError(f"{cfg}: use_bias is true (in_proj/out_proj biases), which llama.cpp's "
                           "mamba2 layout has no tensors for")
    if config.get("use_conv_bias") is False:
        raise VkInferError(f"{cfg}: use_conv_bias is false; the mamba2 layout needs the conv bias")
    vocab_size = int(_hparam(config, ["vocab_size"], path=cfg))
    pad = int(config.get("pad_vocab_size_multiple") or 16)      # llama.cpp's default for Mamba-2
    n_vocab = -(vocab_size // -pad) * pad
    conv_dim = d_inner + 2 * n_groups * d_state
    hp = {"d_model": d_model, "n_layer": n_layer, "d_conv": d_conv, "d_inner": d_inner,
          "d_state": d_state, "n_heads": n_heads, "n_groups": n_groups, "eps": eps,
          "vocab_size": vocab_size, "n_vocab": n_vocab}

    emb_rows = tensors["backbone.embeddings.weight"].shape[0] if "backbone.embeddings.weight" in tensors else vocab_size
    want = {"backbone.embeddings.weight": ("token_embd.weight", (emb_rows, d_model), "w", None)}
    H = n_heads
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        b = f"blk.{i}."
        want[m + "A_log"] = (b + "ssm_a", (H,), "f32", _neg_exp, (H, 1))
        want[m + "D"] = (b + "ssm_d", (H,), "f32", None, (H, 1))
        want[m + "conv1d.weight"] = (b + "ssm_conv1d.weight", (conv_dim, 1, d_conv), "f32", None,
                                     (conv_dim, d_conv))
        want[m + "conv1d.bias"] = (b + "ssm_conv1d.bias", (conv_dim,), "f32", None)
        want[m + "dt_bias"] = (b + "ssm_dt.bias", (H,), "f32", None)
        want[m + "in_proj.weight"] = (b + "ssm_in.weight", (d_inner + conv_dim + H, d_model), "w", None)
        want[m + "norm.weight"] = (b + "ssm_norm.weight", (d_inner,), "f32", None,
                                   (n_groups, d_inner // n_groups))
        want[m + "out_proj.weight"] = (b + "ssm_out.weight", (d_model, d_inner), "w", None)
        want[p + "norm.weight"] = (b + "attn_norm.weight", (d_model,), "f32", None)
    want["backbone.norm_f.weight"] = ("output_norm.weight", (d_model,), "f32", None)
    optional = {"lm_head.weight": ("output.weight", (emb_rows, d_model), "w", None)}
    tie = bool(config.get("tie_word_embeddings", False))
    outs, hp["n_vocab"] = _plan_outs(want, optional, tensors, hf_dir, vocab_size, n_vocab,
                                     "Mamba-2", tied=lambda head, emb: tie)
    return outs, hp


def _same_values(a: _Source, b: _Source) -> bool:
    if a.shape != b.shape:
        return False
    ra, rb = a.raw(), b.raw()
    step = max(1, _CHUNK_BYTES // max(1, ra.nbytes // max(1, ra.shape[0])))
    for i in range(0, ra.shape[0], step):
        if not np.array_equal(_to_f32(ra[i:i + step], a.dtype), _to_f32(rb[i:i + step], b.dtype)):
            return False
    return True


# ---- the tokenizer ----------------------------------------------------------------------------
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def _looks_special(text: str) -> bool:
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _flatten(section) -> list:
    if not section:
        return []
    if section.get("type") == "Sequence":
        items = section.get("pretokenizers") or section.get("normalizers") or []
        return [x for item in items for x in _flatten(item)]
    return [section]


def recognise_pre_tokenizer(tok: dict, where: str) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a byte-level BPE tokenizer.json, from its
    pre_tokenizer (and normalizer) sections."""
    pre = _flatten(tok.get("pre_tokenizer"))
    norm = [n.get("type") for n in _flatten(tok.get("normalizer"))]
    types = [p.get("type") for p in pre]
    if types == ["ByteLevel"] and pre[0].get("use_regex", True):
        if pre[0].get("add_prefix_space"):
            raise VkInferError(f"{where}: a ByteLevel pre-tokenizer with add_prefix_space is not "
                               "supported")
        # GPT-NeoX (Mamba's tokenizer, also MPT and OLMo) normalizes to NFC; GPT-2 does not.
        return "mpt" if norm == ["NFC"] else "gpt-2"
    if (types[:3] == ["Punctuation", "ByteLevel", "Digits"] and len(pre) >= 3
            and pre[1].get("use_regex", True) and not pre[2].get("individual_digits", False)):
        return "falcon"
    raise VkInferError(f"{where}: pre-tokenizer not recognised ({json.dumps(tok.get('pre_tokenizer'))[:200]}); "
                       "vkinfer convert knows the GPT-2, GPT-NeoX and Falcon byte-level ones")


def read_tokenizer(hf_dir: Path, n_vocab: int) -> dict:
    """tokens, token types, merges, pre-tokenizer name and the gguf SpecialVocab of hf_dir."""
    import gguf
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise VkInferError(f"{hf_dir}: no tokenizer.json (vkinfer convert needs the checkpoint's "
                           "byte-level BPE tokenizer.json)")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model = tok["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VkInferError(f"{path}: not a tokenizers file ({e})") from None
    where = f"{hf_dir.name}/tokenizer.json"
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise VkInferError(f"{where}: a {model.get('type')} model"
                           f"{' with byte fallback' if model.get('byte_fallback') else ''}; "
                           "vkinfer convert reads byte-level BPE tokenizers")
    pre = recognise_pre_tokenizer(tok, where)
    vocab = dict(model.get("vocab") or {})
    added = {}
    for a in tok.get("added_tokens") or []:
        vocab[a["content"]] = a["id"]
        added[a["id"]] = a
    if not vocab:
        raise VkInferError(f"{where}: the vocabulary is empty")
    top = max(vocab.values())
    if top >= n_vocab:
        raise VkInferError(f"{where}: token id {top} is beyond the model's vocabulary of {n_vocab}")
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
            continue
        text = reverse[i]
        if i in added:
            if added[i].get("special") or _looks_special(text):
                types.append(_CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(_USER_DEFINED)
        else:
            types.append(_NORMAL)
        tokens.append(text)
    special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise VkInferError(f"{where}: no merges")
    if special.chat_template is None and (hf_dir / "chat_template.jinja").is_file():
        special.chat_template = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return dict(tokens=tokens, types=types, pre=pre, special=special)


# ---- writing ----------------------------------------------------------------------------------
def _choose_outtype(outtype: str, outs: list) -> str:
    if outtype not in OUTTYPES:
        raise VkInferError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    if outtype == "auto":      # as llama.cpp: F16 if the first tensor is F16, else BF16
        first = outs[0].src.dtype
        outtype = "f16" if first == "F16" else "bf16"
        log.info("--outtype auto: %s (the first tensor is %s)", outtype, first)
    return outtype


def _encode(values: np.ndarray, qtype: str) -> np.ndarray:
    if qtype == "F32":
        return values.astype(np.float32, copy=False)
    if qtype == "F16":
        return values.astype(np.float16)
    import gguf
    if qtype == "Q8_0":         # gguf-py's reference quantize_row_q8_0, row by row
        return gguf.quants.quantize(np.ascontiguousarray(values, np.float32),
                                    gguf.GGMLQuantizationType.Q8_0)
    # BF16: round to nearest even, NaNs kept quiet (gguf-py's rule)
    q = gguf.quants.quantize(np.ascontiguousarray(values, np.float32),
                             gguf.GGMLQuantizationType.BF16)
    return np.ascontiguousarray(q).view(np.uint16)


_NP_OUT = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "Q8_0": np.uint8}


def _out_shape(o: _Out) -> tuple:
    """The numpy shape of the bytes written for o (Q8_0: each row of n weights as n / 32 blocks
    of 34 bytes)."""
    if o.qtype == "Q8_0":
        return o.shape[:-1] + (o.shape[-1] // _QK8_0 * _Q8_0_BLOCK,)
    return o.shape


def _out_nbytes(o: _Out) -> int:
    return int(np.prod(_out_shape(o), dtype=np.int64)) * np.dtype(_NP_OUT[o.qtype]).itemsize


def _weight_type(o: _Out, wtype: str) -> str:
    """The type of a tensor that follows the output type. As llama.cpp's convert_hf_to_gguf.py
    at --outtype q8_0: a matrix whose rows are not whole Q8_0 blocks (Mamba's ssm_dt, of
    dt_rank columns) falls back to F16, as gguf-py's QuantError makes it do."""
    if wtype != "Q8_0":
        return wtype
    row = int(np.prod(o.src.shape[1:])) if o.src.shape else 1      # an input row: an output row
    if len(o.shape) != 2 or o.shape[-1] % _QK8_0 or row != o.shape[-1]:
        return "F16"
    return "Q8_0"


def _materialise(o: _Out) -> np.ndarray:
    """The tensor's output array, built in row chunks from the memory-mapped input."""
    raw = o.src.raw().reshape(o.src.shape[0], -1) if o.src.shape else o.src.raw().reshape(1, 1)
    out = np.empty(_out_shape(o), _NP_OUT[o.qtype])
    # the input's rows (then any padding rows); for Q8_0 an input row is an output row
    flat = out.reshape(-1, out.shape[-1] if o.qtype == "Q8_0" else raw.shape[1])
    rows = raw.shape[0]
    step = max(1, _CHUNK_BYTES // max(1, raw.nbytes // max(1, rows)))
    for i in range(0, rows, step):
        j = min(i + step, rows)
        v = _to_f32(raw[i:j], o.src.dtype)
        if o.transform is not None:
            v = o.transform(v)
        flat[i:j] = _encode(v, o.qtype).reshape(flat[i:j].shape)
    if o.pad_rows:
        flat[rows:] = 0
    return out


def _pretty_name(dir_name: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in dir_name.replace("_", "-").split("-") if w)


def convert(hf_dir, out=None, outtype: str = "auto", quiet: bool = False) -> dict:
    """Convert the checkpoint directory hf_dir to the GGUF file out (default: DIRNAME-TYPE.gguf
    in the current directory); returns a summary dict (path, tensors, types: {type: count},
    bytes, seconds, outtype, arch, n_vocab)."""
    import gguf
    from tqdm import tqdm
    t0 = time.perf_counter()
    hf_dir = Path(hf_dir)
    config = load_config(hf_dir)
    archs = config.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise VkInferError(f"{hf_dir.name}/config.json: architecture "
                           f"{', '.join(map(str, archs)) or '(none given)'} is not supported by "
                           f"vkinfer convert (supported: {', '.join(ARCHITECTURES)})")
    if outtype not in OUTTYPES:
        raise VkInferError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise VkInferError(f"{out}: is a directory; give the output file name")
        if not out.parent.is_dir():
            raise VkInferError(f"{out.parent}: no such directory for the output file")
    tensors = open_checkpoint(hf_dir)
    gguf_arch = GGUF_ARCH[arch]
    outs, hp = (plan_mamba2 if gguf_arch == "mamba2" else plan_mamba)(config, tensors, hf_dir)
    vocab = read_tokenizer(hf_dir, hp["n_vocab"])
    outtype = _choose_outtype(outtype, outs)
    if out is None:
        out = Path.cwd() / f"{hf_dir.resolve().name}-{outtype}.gguf"
    wtype = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[outtype]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    for o in outs:
        o.qtype = "F32" if (o.kind == "f32" or len(o.shape) <= 1) else _weight_type(o, wtype)

    writer = gguf.GGUFWriter(None, gguf_arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(_pretty_name(hf_dir.resolve().name))
    n_params = sum(int(np.prod(o.shape)) for o in outs)
    writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    writer.add_context_length(2 ** 20)          # llama.cpp's value: the recurrent state has no limit
    writer.add_embedding_length(hp["d_model"])
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_block_count(hp["n_layer"])
    writer.add_ssm_conv_kernel(hp["d_conv"])
    writer.add_ssm_inner_size(hp["d_inner"])
    writer.add_ssm_state_size(hp["d_state"])
    if gguf_arch == "mamba2":
        writer.add_ssm_time_step_rank(hp["n_heads"])
        writer.add_ssm_group_count(hp["n_groups"])
        writer.add_layer_norm_rms_eps(hp["eps"])
    else:
        writer.add_ssm_time_step_rank(hp["dt_rank"])
        writer.add_layer_norm_rms_eps(hp["eps"])
        writer.add_ssm_dt_b_c_rms(hp["dt_b_c_rms"])
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    vocab["special"].add_to_gguf(writer, quiet=True)

    for o in outs:      # the shape in weights (a Q8_0 one too: its dtype is not given as uint8)
        dt = np.dtype(np.float32 if o.qtype == "Q8_0" else _NP_OUT[o.qtype])
        writer.add_tensor_info(o.name, o.shape, dt, _out_nbytes(o),
                               gguf.GGMLQuantizationType[o.qtype])

    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    total = sum(_out_nbytes(o) for o in outs)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"converting {hf_dir.name}",
               disable=quiet or not sys.stderr.isatty(), leave=False)
    try:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for o in outs:
                data = _materialise(o)
                writer.write_tensor_data(data)
                bar.update(data.nbytes)
                del data
            writer.close()
        except OSError as e:
            raise VkInferError(f"{out}: cannot write ({e.strerror or e})") from None
        os.replace(tmp, out)
    finally:
        bar.close()
        if writer.fout:
            for f in writer.fout:
                f.close()
        if tmp.exists():
            tmp.unlink()
    types = {}
    for o in outs:
        types[o.qtype] = types.get(o.qtype, 0) + 1
    return dict(path=out, tensors=len(outs), types=types, bytes=out.stat().st_size,
                seconds=time.perf_counter() - t0, outtype=outtype, arch=arch,
                gguf_arch=gguf_arch, n_vocab=hp["n_vocab"])


def summary_line(s: dict) -> str:
    types = ", ".join(f"{k} {v}" for k, v in sorted(s["types"].items()))
    size = s["bytes"]
    size_text = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"
    return (f"wrote {s['path']}: {s['arch']} → {s.get('gguf_arch', 'mamba')}, {s['tensors']} tensors ({types}), "
            f"{size_text} ({size} bytes) in {s['seconds']:.2f} s")


# ---- the command ------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    s = convert(args.model_dir, args.outfile, args.outtype, quiet=args.quiet)
    print(summary_line(s))
    return 0


def add_convert_command(commands) -> None:
    """Add `convert` to the argparse subparsers object `commands`."""
    p = commands.add_parser("convert", help="convert a Hugging Face checkpoint directory to GGUF")
    p.add_argument("model_dir", metavar="HF_DIR",
                   help="directory with config.json, *.safetensors and tokenizer.json")
    p.add_argument("-o", "--outfile", metavar="OUT.gguf", default=None,
                   help="output file (default: DIRNAME-TYPE.gguf in the current directory)")
    p.add_argument("--outtype", choices=OUTTYPES, default="auto",
                   help="type of the weight matrices: f32, f16, bf16, q8_0 (as llama.cpp: a "
                        "matrix whose rows are not whole 32-weight blocks is F16), or auto (f16 "
                        "for an F16 checkpoint, else bf16, as llama.cpp); norms, biases, A, D "
                        "and the conv stay F32")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    try:
        from .cli import add_global_options
        add_global_options(p, defaults=False)
    except ImportError:     # pragma: no cover
        pass
    p.set_defaults(run=cmd_convert)
