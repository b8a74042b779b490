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
`tie_word_embeddings` is set. `ZayaForCausalLM` (transformers' native layout, every layer holding
CCA attention and the MoE) is written in the llama.cpp ZAYA1 draft's `zaya` layout, the one
vkinfer.models.zaya reads: 2 blocks per layer (attention 2k, MoE 2k + 1), the names, metadata
keys and F32 tensors of the draft's converter (zaya1.md §1-2), the embedding cut to the
tokenizer's size; see plan_zaya.

It streams: the safetensors files are memory-mapped and every tensor is read, converted and
written on its own (the output array of one tensor is the only large allocation), so a model
much larger than memory converts. The output is written to a temporary name next to OUT and
renamed at the end; an error leaves no OUT behind (and removes the temporary file).

The tokenizer comes from `tokenizer.json`: byte-level BPE as `tokenizer.ggml.model = gpt2`, the
pre-tokenizer recognised from its `pre_tokenizer` and `normalizer` sections; the Gemma family's
byte-fallback BPE (ZAYA1's) as `gemma4`, as llama.cpp's converters write it (placeholder scores,
`<0xXX>` BYTE, the config's special tokens CONTROL, tokens added beyond the vocabulary
USER_DEFINED, add_bos on, no space prefix). The special-token ids, `add_bos`/`add_eos` and the
chat template come from `tokenizer_config.json` (or `chat_template.jinja`) through gguf-py's
SpecialVocab.
"""
import json
import logging
import os
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np

from .errors import VkInferError

log = logging.getLogger(__name__)

ARCHITECTURES = ("MambaForCausalLM", "FalconMambaForCausalLM", "Mamba2ForCausalLM", "ZayaForCausalLM")
# HF architecture -> GGUF general.architecture
GGUF_ARCH = {"MambaForCausalLM": "mamba", "FalconMambaForCausalLM": "mamba",
             "Mamba2ForCausalLM": "mamba2", "ZayaForCausalLM": "zaya"}
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

    def __init__(self, name, shape, kind, src, transform=None, pad_rows=0, rows=None):
        self.name, self.shape, self.kind, self.src = name, tuple(shape), kind, src
        self.transform, self.pad_rows = transform, pad_rows
        self.rows = rows            # the source rows written (None: all; fewer: a trimmed vocabulary)
        self.qtype = None


def _neg_exp(x):
    return -np.exp(x)


def plan_mamba(config: dict, tensors: dict, hf_dir: Path, n_tokens: int) -> tuple[list, dict]:
    """(list of _Out in file order, hyper-parameters) for Mamba-1 / Falcon-Mamba; checks that
    every tensor is present with its shape and that nothing unknown is left over. (n_tokens,
    the tokenizer's size, is not needed: the vocabulary is padded from the config.)"""
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
                                     "Falcon-Mamba" if falcon else "Mamba", tied=_same_values,
                                     embedding="backbone.embeddings.weight")
    hp["kv"] = _mamba_kv(hp) + [("add_ssm_time_step_rank", dt_rank), ("add_layer_norm_rms_eps", eps),
                                ("add_ssm_dt_b_c_rms", falcon)]
    return outs, hp


def _mamba_kv(hp: dict) -> list:
    """The (GGUFWriter method, value) pairs that mamba and mamba2 share, as llama.cpp writes them."""
    return [("add_context_length", 2 ** 20),      # llama.cpp's value: the recurrent state has no limit
            ("add_embedding_length", hp["d_model"]), ("add_feed_forward_length", 0),
            ("add_head_count", 0), ("add_block_count", hp["n_layer"]),
            ("add_ssm_conv_kernel", hp["d_conv"]), ("add_ssm_inner_size", hp["d_inner"]),
            ("add_ssm_state_size", hp["d_state"])]


def _plan_outs(want: dict, optional: dict, tensors: dict, hf_dir: Path, vocab_size: int,
               n_vocab: int, what: str, tied, embedding: str, trim: bool = False) -> tuple[list, int]:
    """The _Out list (in checkpoint order) and the vocabulary size for the expected tensors
    `want` and `optional` (HF name -> (gguf name, HF shape, kind, transform[, output shape])):
    every one of `want` must be there with its shape and nothing else may be; lm_head.weight is
    left out where tied(lm_head, embedding) says so. Without an output shape a tensor is
    squeezed (as llama.cpp does for Mamba-1). The embedding (HF name `embedding`) and output
    rows are padded with zeros up to n_vocab, or with `trim` cut to n_vocab (the tokenizer's
    size, as the ZAYA draft converter does)."""
    cfg = f"{hf_dir.name}/config.json"
    missing = [n for n in want if n not in tensors]
    if missing:
        raise VkInferError(f"{hf_dir.name}: {len(missing)} tensor(s) missing from the checkpoint: "
                           + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    unknown = [n for n in tensors if n not in want and n not in optional]
    if unknown:
        raise VkInferError(f"{hf_dir.name}: tensor(s) a {what} checkpoint does not have: "
                           + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    emb_rows = want[embedding][1][0]
    if emb_rows < vocab_size:
        raise VkInferError(f"{hf_dir.name}: {embedding} has {emb_rows} rows for "
                           f"vocab_size {vocab_size}")
    if trim and emb_rows < n_vocab:
        raise VkInferError(f"{hf_dir.name}: the tokenizer has {n_vocab} tokens but {embedding} "
                           f"only {emb_rows} rows")
    n_vocab = n_vocab if trim else max(n_vocab, emb_rows)
    pad_rows = max(0, n_vocab - emb_rows)

    outs = []
    for name, src in tensors.items():
        spec = want.get(name) or optional.get(name)
        gname, shape, kind, fn = spec[:4]
        if src.shape != tuple(shape):
            raise VkInferError(f"{src.path.name}: tensor {name} has shape {list(src.shape)}, "
                               f"expected {list(shape)} from {cfg}")
        if src.dtype not in _FLOAT_DTYPES:
            raise VkInferError(f"{src.path.name}: tensor {name} has dtype {src.dtype}, not a float type")
        if name == "lm_head.weight" and tied(src, tensors[embedding]):
            log.info("lm_head.weight is tied to the embedding: left out")
            continue
        out_shape = spec[4] if len(spec) > 4 else (tuple(d for d in shape if d != 1) or (1,))
        if gname in ("token_embd.weight", "output.weight"):
            out_shape = (n_vocab, *out_shape[1:])
            outs.append(_Out(gname, out_shape, kind, src, fn, pad_rows, min(n_vocab, emb_rows)))
        else:
            outs.append(_Out(gname, out_shape, kind, src, fn))
    return outs, n_vocab



def plan_mamba2(config: dict, tensors: dict, hf_dir: Path, n_tokens: int) -> tuple[list, dict]:
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
                                     "Mamba-2", tied=lambda head, emb: tie,
                                     embedding="backbone.embeddings.weight")
    hp["kv"] = _mamba_kv(hp) + [("add_ssm_time_step_rank", n_heads), ("add_ssm_group_count", n_groups),
                                ("add_layer_norm_rms_eps", eps)]
    return outs, hp


# ---- the ZAYA1 plan ---------------------------------------------------------------------------
# The native transformers layout (every layer k holds CCA attention and the MoE) -> the llama.cpp
# draft's 80-block layout: attention in block 2k, MoE in block 2k + 1 (zaya1.md §2.5). Each row:
# native name under model.layers.k., GGUF name under the block, HF shape, kind, GGUF shape if not
# the HF one. The shapes are filled in by _zaya_layer_tables.
_RES_SCALE = (("hidden_states_scale", "res_scale_hs.weight"), ("hidden_states_bias", "res_scale_hs.bias"),
              ("residual_scale", "res_scale_res.weight"), ("residual_bias", "res_scale_res.bias"))


def _zaya_layer_tables(d, H, Hkv, dh, t0, t1, E, ff, r):
    n_qk = (H + Hkv) * dh
    q = "self_attn.qkv_proj."
    attention = [
        ("input_layernorm.weight", "attn_norm.weight", (d,), "f32"),
        (q + "q_proj.weight", "attn_q.weight", (H * dh, d), "w"),
        (q + "k_proj.weight", "attn_k.weight", (Hkv * dh, d), "w"),
        (q + "v_proj_current.weight", "cca_val_proj1.weight", (Hkv * dh // 2, d), "w"),
        (q + "v_proj_delayed.weight", "cca_val_proj2.weight", (Hkv * dh // 2, d), "w"),
        (q + "conv_qk_depthwise.weight", "ssm_conv1d.weight", (n_qk, 1, t0), "f32", (n_qk, t0)),
        (q + "conv_qk_depthwise.bias", "ssm_conv1d.bias", (n_qk,), "f32"),
        (q + "conv_qk_grouped.weight", "cca_conv_grp.weight", (n_qk, dh, t1), "w"),
        (q + "conv_qk_grouped.bias", "cca_conv_grp.bias", (n_qk,), "f32"),
        ("self_attn.qk_norm.temp", "cca_k_scale.weight", (Hkv,), "f32"),
        ("self_attn.o_proj.weight", "attn_output.weight", (d, H * dh), "w"),
    ]
    g = "mlp.gate."
    moe = [
        ("post_attention_layernorm.weight", "attn_norm.weight", (d,), "f32"),
        *((f"post_attention_residual_scale.{hf}", name, (d,), "f32") for hf, name in _RES_SCALE),
        (g + "down_proj.weight", "ffn_gate_inp.weight", (r, d), "f32"),   # F32, as the draft
        (g + "down_proj.bias", "ffn_gate_inp.bias", (r,), "f32"),
        (g + "router_mlp.norm.weight", "ffn_norm.weight", (r,), "f32"),
        (g + "router_mlp.fc1.weight", "ffn_gate.weight", (r, r), "w"),
        (g + "router_mlp.fc1.bias", "ffn_gate.bias", (r,), "f32"),
        (g + "router_mlp.fc2.weight", "zaya_router_mlp2.weight", (r, r), "w"),
        (g + "router_mlp.fc2.bias", "zaya_router_mlp2.bias", (r,), "f32"),
        (g + "router_mlp.out_proj.weight", "zaya_router_mlp4.weight", (E + 1, r), "w"),
        (g + "balancing_biases", "zaya_router_biases.weight", (E + 1,), "f32"),
        ("mlp.experts.gate_up_proj", "ffn_gate_up_exps.weight", (E, 2 * ff, d), "w"),   # gate | up rows
        ("mlp.experts.down_proj", "ffn_down_exps.weight", (E, d, ff), "w"),
    ]
    return attention, moe


def plan_zaya(config: dict, tensors: dict, hf_dir: Path, n_tokens: int) -> tuple[list, dict]:
    """(list of _Out in file order, hyper-parameters) for ZAYA1 in transformers' layout
    (ZayaConfig), written in the llama.cpp draft's layout that vkinfer.models.zaya reads: the
    embedding cut to the tokenizer's n_tokens, the depthwise conv squeezed to [n_qk, taps], the
    router's down projection F32, the stacked experts as they are (gate_up = gate rows, then up
    rows), layer k's post-MLP residual scale as block 2k + 2's (the last one global), the input
    scale as block 0's, the EDA scale on every MoE block but the first."""
    cfg = f"{hf_dir.name}/config.json"

    def need(*keys, default=None):
        return _hparam(config, keys, default, path=cfg)
    if "zaya_layers" in config or "cca" in config:
        raise VkInferError(f"{cfg}: a legacy (Megatron-style) ZAYA checkpoint; vkinfer convert reads "
                           "the transformers layout (Zyphra/ZAYA1-8B, not ZAYA1-8B-legacy)")
    d, L = int(need("hidden_size")), int(need("num_hidden_layers"))
    H, Hkv = int(need("num_attention_heads")), int(need("num_key_value_heads"))
    dh = int(need("head_dim", default=d // H))
    E, k_used = int(need("num_experts")), int(need("num_experts_per_tok", default=1))
    ff, r = int(need("moe_intermediate_size")), int(need("router_hidden_size"))
    t0, t1 = int(need("cca_time0", default=2)), int(need("cca_time1", default=2))
    eps = float(need("rms_norm_eps", default=1e-5))
    kinds = set(config.get("layer_types") or ["hybrid"])
    if kinds != {"hybrid"}:
        raise VkInferError(f"{cfg}: layer_types {sorted(kinds)}; vkinfer's ZAYA has only full-attention "
                           "'hybrid' layers (no sliding window)")
    rope = config.get("rope_parameters") or {}
    rope = rope.get("hybrid", rope)
    theta = float(rope.get("rope_theta", config.get("rope_theta", 1e6)))
    n_rot = int(dh * float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))))
    if H % Hkv or dh % 2:
        raise VkInferError(f"{cfg}: num_attention_heads {H} is not a multiple of num_key_value_heads "
                           f"{Hkv}, or head_dim {dh} is odd")
    vocab_size = int(need("vocab_size"))

    emb = "model.embed_tokens.weight"
    emb_rows = tensors[emb].shape[0] if emb in tensors else vocab_size
    want = {emb: ("token_embd.weight", (emb_rows, d), "w", None),
            "model.norm.weight": ("output_norm.weight", (d,), "f32", None),
            "model.input_hidden_states_scale": ("blk.0.res_scale_hs.weight", (d,), "f32", None),
            "model.input_hidden_states_bias": ("blk.0.res_scale_hs.bias", (d,), "f32", None)}
    attention, moe = _zaya_layer_tables(d, H, Hkv, dh, t0, t1, E, ff, r)
    for k in range(L):
        layer, a, m = f"model.layers.{k}.", f"blk.{2 * k}.", f"blk.{2 * k + 1}."
        rows = [(a, row) for row in attention] + [(m, row) for row in moe]
        if k > 0:       # the first MoE block has no router state to take in
            rows.append((m, ("mlp.gate.router_states_scale", "zaya_router_eda.weight", (r,), "f32")))
        after = f"blk.{2 * k + 2}." if k + 1 < L else ""      # merged at the next block, or globally
        rows += [(after, (f"post_mlp_residual_scale.{hf}", name, (d,), "f32")) for hf, name in _RES_SCALE]
        for block, (hf, name, shape, kind, *out_shape) in rows:
            want[layer + hf] = (block + name, shape, kind, None, *(out_shape or [shape]))
    optional = {"lm_head.weight": ("output.weight", (emb_rows, d), "w", None)}
    outs, n_vocab = _plan_outs(want, optional, tensors, hf_dir, vocab_size, n_tokens, "ZAYA1",
                               tied=_same_values, embedding=emb, trim=True)
    if any(o.name == "output.weight" for o in outs):
        raise VkInferError(f"{hf_dir.name}: lm_head.weight differs from the embedding; the ZAYA "
                           "layout has no output.weight (its head is tied)")
    hp = {"n_vocab": n_vocab}
    hp["kv"] = [("add_block_count", 2 * L), ("add_context_length", int(need("max_position_embeddings"))),
                ("add_embedding_length", d), ("add_head_count", H), ("add_head_count_kv", Hkv),
                ("add_rope_freq_base", theta), ("add_layer_norm_rms_eps", eps), ("add_layer_norm_eps", eps),
                ("add_expert_count", E), ("add_key_length", dh), ("add_value_length", dh),
                ("add_vocab_size", n_vocab), ("add_feed_forward_length", ff), ("add_ssm_conv_kernel", t0),
                ("add_rope_dimension_count", n_rot), ("add_expert_used_count", k_used),
                ("add_expert_feed_forward_length", r)]
    return outs, hp


PLANS = {"mamba": plan_mamba, "mamba2": plan_mamba2, "zaya": plan_zaya}


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
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 3, 4, 5, 6


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


def recognise_gemma_tokenizer(tok: dict, where: str) -> None:
    """A byte-fallback BPE must be the Gemma family's (llama.cpp's `gemma4`): spaces written as
    "\u2581" by the normalizer (or a Metaspace that never prepends), no prefix space, at most a
    Split pre-tokenizer (llama.cpp's gemma4 splits off runs of newlines itself)."""
    norm, pre = _flatten(tok.get("normalizer")), _flatten(tok.get("pre_tokenizer"))
    spaces = [n for n in norm + pre
              if (n.get("type") == "Replace" and (n.get("pattern") or {}).get("String") == " "
                  and n.get("content") == "\u2581")
              or (n.get("type") == "Metaspace" and n.get("prepend_scheme") == "never")]
    others = [n.get("type") for n in norm + pre if n not in spaces and n.get("type") != "Split"]
    if len(spaces) != 1 or others:
        raise VkInferError(f"{where}: a byte-fallback BPE with normalizer "
                           f"{json.dumps(tok.get('normalizer'))[:120]} and pre-tokenizer "
                           f"{json.dumps(tok.get('pre_tokenizer'))[:120]}; vkinfer convert knows the "
                           "Gemma-family one (spaces as \u2581, no prefix space)")


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _config_special_texts(hf_dir: Path) -> set:
    """The texts tokenizer_config.json names as special tokens (what transformers' all_special_ids
    holds): the bos/eos/unk/sep/pad/cls/mask tokens and additional_/extra_special_tokens."""
    path = hf_dir / "tokenizer_config.json"
    if not path.is_file():
        return set()
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VkInferError(f"{path}: not valid JSON ({e})") from None
    items = [cfg.get(f"{k}_token") for k in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        more = cfg.get(key) or []
        items += list(more.values()) if isinstance(more, dict) else list(more)
    texts = (x.get("content") if isinstance(x, dict) else x for x in items)
    return {t for t in texts if isinstance(t, str)}


def read_tokenizer_json(hf_dir: Path) -> dict:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise VkInferError(f"{hf_dir}: no tokenizer.json (vkinfer convert needs the checkpoint's "
                           "BPE tokenizer.json)")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(tok["model"], dict):
            raise TypeError("model is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VkInferError(f"{path}: not a tokenizers file ({e})") from None
    return tok


def tokenizer_size(tok: dict) -> int:
    """1 + the largest token id of the vocabulary and the added tokens (0 when empty)."""
    ids = [*(tok["model"].get("vocab") or {}).values(), *(a["id"] for a in tok.get("added_tokens") or [])]
    return max(ids, default=-1) + 1


def read_tokenizer(hf_dir: Path, n_vocab: int, tok: dict) -> dict:
    """The tokenizer model (`gpt2` for byte-level BPE, `gemma4` for the Gemma family's
    byte-fallback BPE), tokens, token types, scores, pre-tokenizer name and the gguf
    SpecialVocab of hf_dir, from its parsed tokenizer.json `tok`, as n_vocab tokens."""
    import gguf
    model = tok["model"]
    where = f"{hf_dir.name}/tokenizer.json"
    if model.get("type") != "BPE":
        raise VkInferError(f"{where}: a {model.get('type')} model; vkinfer convert reads byte-level "
                           "BPE and the Gemma family's byte-fallback BPE")
    kind = "gemma4" if model.get("byte_fallback") else "gpt2"
    if kind == "gpt2":
        pre = recognise_pre_tokenizer(tok, where)
    else:
        recognise_gemma_tokenizer(tok, where)
        pre = None
    base = dict(model.get("vocab") or {})
    vocab, added = dict(base), {}
    for a in tok.get("added_tokens") or []:
        vocab[a["content"]] = a["id"]
        added[a["id"]] = a
    if not vocab:
        raise VkInferError(f"{where}: the vocabulary is empty")
    top = max(vocab.values())
    if top >= n_vocab:
        raise VkInferError(f"{where}: token id {top} is beyond the model's vocabulary of {n_vocab}")
    reverse = {i: t for t, i in vocab.items()}
    in_base = set(base.values())
    special_texts = _config_special_texts(hf_dir) if kind == "gemma4" else set()
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
            continue
        text = reverse[i]
        if kind == "gemma4":
            # gguf-py's LlamaHfVocab (llama.cpp's gemma4 and ZAYA converters): byte tokens, the
            # config's special tokens CONTROL, tokens added beyond the vocabulary USER_DEFINED
            if i in in_base and _BYTE_TOKEN.fullmatch(text):
                types.append(_BYTE)
            elif text in special_texts:
                types.append(_CONTROL)
            else:
                types.append(_NORMAL if i in in_base else _USER_DEFINED)
        elif i in added:
            if added[i].get("special") or _looks_special(text):
                types.append(_CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(_USER_DEFINED)
        else:
            types.append(_NORMAL)
        tokens.append(text)
    merges = model.get("merges") or []
    if not merges:
        raise VkInferError(f"{where}: no merges")
    if not isinstance(merges[0], str):      # [left, right] pairs: gguf-py's "left right", a space as U+0120
        merges = [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
    special = gguf.SpecialVocab(hf_dir, load_merges=False, n_vocab=n_vocab)
    special.merges = merges
    if special.chat_template is None and (hf_dir / "chat_template.jinja").is_file():
        special.chat_template = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    scores = None
    if kind == "gemma4":        # as llama.cpp: placeholder scores, BOS added, no prefix space
        scores = [-1000.0] * n_vocab
        special.add_special_token["bos"] = True
    return dict(model=kind, tokens=tokens, types=types, scores=scores, pre=pre, special=special)


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
    at --outtype q8_0: a tensor whose rows (last axis) are not whole Q8_0 blocks (Mamba's
    ssm_dt, of dt_rank columns; ZAYA's grouped conv, of 2 taps) falls back to F16, as gguf-py's
    QuantError makes it do. Stacked experts are quantized row by row like matrices."""
    if wtype != "Q8_0":
        return wtype
    if len(o.shape) < 2 or o.shape[-1] % _QK8_0 or o.src.shape[-1] != o.shape[-1]:
        return "F16"
    return "Q8_0"


def _materialise(o: _Out) -> np.ndarray:
    """The tensor's output array, built in row chunks from the memory-mapped input."""
    raw = o.src.raw()
    # the input's rows (then any padding rows); for Q8_0 an input row is an output row
    if o.qtype == "Q8_0":
        raw = raw.reshape(-1, raw.shape[-1])
    else:
        raw = raw.reshape(raw.shape[0] if raw.ndim else 1, -1)
    raw = raw[:o.rows]
    out = np.empty(_out_shape(o), _NP_OUT[o.qtype])
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
    tok = read_tokenizer_json(hf_dir)
    outs, hp = PLANS[gguf_arch](config, tensors, hf_dir, tokenizer_size(tok))
    vocab = read_tokenizer(hf_dir, hp["n_vocab"], tok)
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
    for method, value in hp["kv"]:
        getattr(writer, method)(value)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model(vocab["model"])
    if vocab["pre"] is not None:
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    if vocab["scores"] is not None:
        writer.add_token_scores(vocab["scores"])
    writer.add_token_types(vocab["types"])
    vocab["special"].add_to_gguf(writer, quiet=True)
    if vocab["model"] == "gemma4":
        writer.add_add_space_prefix(False)

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


def add_convert_command(commands):
    """Add `convert` to the argparse subparsers object `commands`; returns its parser."""
    p = commands.add_parser("convert", help="convert a Hugging Face checkpoint directory to GGUF")
    p.add_argument("model_dir", metavar="HF_DIR",
                   help="directory with config.json, *.safetensors and tokenizer.json of a "
                        f"{', '.join(ARCHITECTURES[:-1])} or {ARCHITECTURES[-1]}")
    p.add_argument("-o", "--outfile", metavar="OUT.gguf", default=None,
                   help="output file (default: DIRNAME-TYPE.gguf in the current directory)")
    p.add_argument("--outtype", choices=OUTTYPES, default="auto",
                   help="type of the weight matrices: f32, f16, bf16, q8_0 (as llama.cpp: a "
                        "matrix whose rows are not whole 32-weight blocks is F16), or auto (f16 "
                        "for an F16 checkpoint, else bf16, as llama.cpp); norms, biases, A, D, "
                        "the conv and ZAYA's router input projection stay F32")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_convert)
    return p
