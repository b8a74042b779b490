"""Synthetic GGUF models for measuring speed: the tensor names, shapes, types and metadata of
real Mamba-1 and ZAYA1 checkpoints, random weights, and a real tokenizer copied from a fixture.

    vkinfer synth mamba-130m mamba-370m -t f16 q8_0 q4_k_m -o models-synth/

Weight types follow the real tools: `f16` and `q8_0` as convert_hf_to_gguf writes them (rows
that are not a multiple of 32 stay F16 in Q8_0 files), `q4_k_m` as llama-quantize writes it:
Q4_K for matrices, Q6_K for the tied output head and for ffn_down on the layers its
use_more_bits rule picks, with its fall-backs when a row is not a multiple of 256 (Q4_K -> Q5_0,
Q6_K -> Q8_0, F16 when not a multiple of 32 either). Norms, biases, conv weights, A, D and the
ZAYA router's input projection stay F32 everywhere.

Random block-type weights are random bytes with fp16 scale fields chosen so that the decoded
weights have about the standard deviation asked for (1/sqrt(fan_in) for matrices), so the
activations stay finite through every layer. A ZAYA router routes like a trained one: its
balancing biases are fitted, as training fits them, to load every expert evenly (before that a
32-token chunk of random tokens sent ~30 tokens to one expert, and the MoE prompt benchmarks
measured full expert tiles no real model gives). Files are written tensor by tensor: host memory
peaks at the largest tensor, not at the file.
"""
import lzma
import shutil
import tempfile
from dataclasses import fields
from math import ceil, sqrt
from pathlib import Path

import numpy as np

from .errors import VkInferError
from .gguf import open_gguf
from .models.mamba import MambaParams, mamba_tensors
from .models.mamba2 import Mamba2Params, mamba2_tensors
from .models.zaya import ZayaParams, zaya_tensors
from .ops import moe
from .ops.norm import rms_norm_ref
from .quants import pack_scales_k4

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# (layers, d_model, dt_b_c_rms, vocabulary rows, tied head)
MAMBA_SIZES = {"mamba-130m": (24, 768, False, 50280, True), "mamba-370m": (48, 1024, False, 50280, True),
               "mamba-1.4b": (48, 2048, False, 50280, True), "mamba-2.8b": (64, 2560, False, 50280, True),
               "falcon-mamba-7b": (64, 4096, True, 65024, False)}
# Mamba-2: (layers, d_model, n_groups, vocabulary rows, tied head); d_state 128, head_dim 64,
# expand 2, d_conv 4 as the state-spaces checkpoints and Mamba-Codestral have them.
MAMBA2_SIZES = {"mamba2-130m": (24, 768, 1, 50280, True), "mamba2-370m": (48, 1024, 1, 50280, True),
                "mamba2-780m": (48, 1536, 1, 50280, True), "mamba2-1.3b": (48, 2048, 1, 50280, True),
                "mamba2-2.7b": (64, 2560, 1, 50280, True), "mamba-codestral-7b": (64, 4096, 8, 32768, False)}
MODELS = (*MAMBA_SIZES, *MAMBA2_SIZES, "zaya1-8b")
WEIGHT_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}          # general.file_type values
MAMBA_VOCAB, ZAYA_VOCAB = 50280, 262147

# Tensors llama-quantize and the converters keep in F32 (besides every 1-D tensor).
ALWAYS_F32 = ("_norm.weight", "ssm_conv1d.weight", "ssm_a", "ssm_d", "ffn_gate_inp.weight")

# Block layouts for random data: bytes per block, elements per block, the byte offsets of the
# fp16 scale fields, and the RMS of the decoded values when those scales are 1 (for Q4_K with
# dmin = 7.5 d and each sub-block's min equal to its scale, so that d*sc*q - dmin*m = d*sc*(q - 7.5)
# centres every 32 weights on zero; for Q6_K with sub-scales in -16..15).
BLOCKS = {"Q8_0": (34, 32, (0,), 73.90), "Q5_0": (22, 32, (0,), 9.247),
          "Q4_K": (144, 256, (0,), 168.3), "Q6_K": (210, 256, (208,), 170.9)}


def use_more_bits(i: int, n: int) -> bool:
    """llama-quantize's choice of the layers that get more bits in *_M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(name: str, shape: tuple, wtype: str, more_bits: bool = False) -> str:
    """The GGML type a real `wtype` file gives this tensor; `more_bits` marks an ffn_down
    tensor on a layer that use_more_bits picks."""
    if len(shape) == 1 or name.endswith(ALWAYS_F32):
        return "F32"
    if "cca_conv_grp" in name:               # never quantized; BF16 when converted as BF16
        return "BF16" if wtype == "q4_k_m" else "F16"
    row = shape[-1]
    if wtype == "f16":
        return "F16"
    if wtype == "q8_0":
        return "Q8_0" if row % 32 == 0 else "F16"
    want = "Q6_K" if name in ("output.weight", "token_embd.weight") or more_bits else "Q4_K"
    if row % 256:
        want = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}[want]
    return want if row % 32 == 0 else "F16"


# ---- models: metadata and tensor plans -------------------------------------------------------------
def mamba_params(model: str, n_layer: int | None = None) -> MambaParams:
    layers, d, dt_b_c_rms = MAMBA_SIZES[model][:3]
    return MambaParams(n_embd=d, n_layer=n_layer or layers, d_conv=4, d_inner=2 * d, d_state=16,
                       dt_rank=ceil(d / 16), eps=1e-5, dt_b_c_rms=dt_b_c_rms, n_ctx_train=1 << 20,
                       dt_b_c_eps=1e-6)


def zaya_params(n_block: int | None = None) -> ZayaParams:
    if n_block is not None and (n_block < 2 or n_block % 2):
        raise ValueError(f"ZAYA needs an even number of blocks (CCA, MoE pairs), not {n_block}")
    return ZayaParams(n_block=n_block or 80, n_embd=2048, n_head=8, n_head_kv=2, head_dim=128,
                      value_dim=128, n_rot=64, rope_theta=5e6, d_conv=2, n_expert=16,
                      n_expert_used=1, n_ff_expert=2048, n_router=256, eps=1e-5, n_ctx_train=131072)


def plan(model: str, wtype: str, n_layer: int | None = None, n_vocab: int | None = None):
    """(arch, params, extra metadata, [(name, numpy shape, GGML type)]) of a synthetic model.
    n_layer and n_vocab shrink it for tests (the tokenizer keeps all its tokens)."""
    if wtype not in WEIGHT_TYPES:
        raise ValueError(f"weight type {wtype!r} is not one of {', '.join(WEIGHT_TYPES)}")
    if model in MAMBA_SIZES:
        arch, p = "mamba", mamba_params(model, n_layer)
        vocab, tied = MAMBA_SIZES[model][3:]
        shapes = mamba_tensors(p, n_vocab or vocab)
        if tied:
            shapes.pop("output.weight")                      # as the converter writes it
        else:
            shapes["output.weight"] = tuple(shapes["output.weight"])
        extra = {"feed_forward_length": 0, "attention.head_count": 0}
    elif model in MAMBA2_SIZES:
        layers, d, groups, vocab, tied = MAMBA2_SIZES[model]
        arch = "mamba2"
        p = Mamba2Params(n_embd=d, n_layer=n_layer or layers, d_conv=4, d_inner=2 * d, d_state=128,
                         n_heads=2 * d // 64, n_groups=groups, eps=1e-5, n_ctx_train=1 << 20)
        shapes = {name: tuple(shape) for name, shape in mamba2_tensors(p, n_vocab or vocab).items()}
        if tied:
            shapes.pop("output.weight")
        extra = {"feed_forward_length": 0, "attention.head_count": 0}
    elif model == "zaya1-8b":
        arch, p = "zaya", zaya_params(n_layer)
        shapes = zaya_tensors(p, n_vocab or ZAYA_VOCAB)
        for name in shapes:
            if name.endswith("cca_conv_grp.weight"):
                shapes[name] = (p.n_qk, p.head_dim, p.d_conv)
            elif name.endswith("ssm_conv1d.bias"):
                shapes[name] = (p.n_qk,)
        extra = {"vocab_size": ZAYA_VOCAB, "attention.layer_norm_epsilon": 1e-5}
    else:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    downs = [name for name in shapes if "ffn_down" in name]
    tensors = [(name, shape, tensor_type(name, shape, wtype,
                                         name in downs and use_more_bits(downs.index(name), len(downs))))
               for name, shape in shapes.items()]
    return arch, p, extra, tensors


# ---- random values ----------------------------------------------------------------------------------
def values(rng, name: str, shape: tuple) -> np.ndarray:
    """Float32 values of a plausible scale for the tensor's role."""
    n = int(np.prod(shape))
    if name.endswith("ssm_a"):                           # A = -exp(A_log), A_log ~ log(1..d_state)
        a_log = np.log(np.arange(1, shape[-1] + 1, dtype=np.float32)) + 0.1 * rng.standard_normal(shape)
        return -np.exp(a_log).astype(np.float32)
    if name.endswith("ssm_dt.bias"):                     # softplus(bias) = dt in [1e-3, 1e-1]
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)
    # A trained model's tokens differ in its residual stream. Residual-scale biases of 0.1 (about
    # five times the embedding's RMS) made the residual 95 % the same for every token, and k-scales
    # of one gave attention scores of unit spread, so every position averaged all values.
    if "res_scale" in name and name.endswith(".bias"):  # a tenth of the embedding's RMS
        return (0.1 / sqrt(shape[-1]) * rng.standard_normal(n)).astype(np.float32)
    if name.endswith("cca_k_scale.weight"):              # sharp attention: scores of spread ~4
        return (4.0 * (1.0 + 0.1 * rng.standard_normal(n))).astype(np.float32)
    if len(shape) == 1 and not name.endswith(".bias"):   # norms, scales, D: around one
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    if len(shape) == 1:
        return (0.1 * rng.standard_normal(n)).astype(np.float32)
    fan_in = shape[-1] * (shape[-2] if "cca_conv_grp" in name else 1)
    return rng.standard_normal(shape, np.float32) * np.float32(1 / sqrt(fan_in))


ROUTER = ("ffn_gate_inp.weight", "ffn_gate_inp.bias", "ffn_norm.weight", "ffn_gate.weight", "ffn_gate.bias",
          "zaya_router_mlp2.weight", "zaya_router_mlp2.bias", "zaya_router_mlp4.weight")


def router_probs(router: dict, x: np.ndarray) -> np.ndarray:
    """A ZAYA router's probabilities [T, n_expert + 1] for normalised inputs x [T, n_embd], without
    the state a previous block passes on (ops.moe.router_ref)."""
    r = router
    return moe.router_ref(x @ r["ffn_gate_inp.weight"].T, r["ffn_gate_inp.bias"], None, None, r["ffn_norm.weight"],
                          r["ffn_gate.weight"], r["zaya_router_mlp2.weight"], r["zaya_router_mlp4.weight"],
                          r["ffn_gate.bias"], r["zaya_router_mlp2.bias"], 0.0)[1]


def random_inputs(rng, n_tokens: int, width: int) -> np.ndarray:
    return rms_norm_ref(rng.standard_normal((n_tokens, width), np.float32))


def balancing_biases(rng, router: dict, n_tokens: int = 1024, steps: int = 400, rate: float = 2e-4):
    """ZAYA1's balancing biases as its training leaves them: Megatron's loss-free balancing moves each
    real expert's bias a fixed step against its load. Random router weights prefer a few experts;
    these biases, found on random inputs, spread tokens as a trained router does. The skip slot's
    bias stays at its initial -1."""
    x = random_inputs(rng, n_tokens, router["ffn_gate_inp.weight"].shape[1])
    probs = router_probs(router, x)[:, :-1]
    biases = np.zeros(probs.shape[1] + 1, np.float32)
    biases[-1] = -1.0
    for _ in range(steps):
        load = np.bincount(np.argmax(probs + biases[:-1], axis=1), minlength=probs.shape[1])
        biases[:-1] += rate * np.sign(load.mean() - load)
    return biases


def tensor_data(rng, tensors: list):
    """Each tensor's GGUF bytes in turn. A ZAYA block's balancing biases come from its router,
    which the plan lists before them."""
    import gguf
    router = {}
    for name, shape, qtype in tensors:
        role = name.split(".", 2)[-1]
        if role == "zaya_router_biases.weight":
            data = balancing_biases(rng, router).view(np.uint8)
        else:
            data = tensor_bytes(rng, name, shape, qtype)
        if role in ROUTER:
            router[role] = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype]).reshape(shape)
        yield data


def random_blocks(rng, qtype: str, n_elems: int, std: float) -> np.ndarray:
    """Random GGUF blocks of `qtype` whose decoded values have about this RMS: uint8 bytes."""
    nbytes, elems, scale_at, unit = BLOCKS[qtype]
    n_blocks = n_elems // elems
    blocks = np.frombuffer(rng.bytes(n_blocks * nbytes), np.uint8).reshape(n_blocks, nbytes).copy()
    d = (std / unit * rng.uniform(0.75, 1.25, n_blocks)).astype(np.float16)
    for at in scale_at:
        blocks[:, at:at + 2] = d.view(np.uint8).reshape(-1, 2)
    if qtype == "Q4_K":
        # Random mins would give each 32 weights a mean of their own, 7.5 d (sc - m): a matrix of
        # such rows turns any input with a mean (a GELU's output) into a fixed offset per row, and
        # ZAYA's router then picks the same expert for every token.
        blocks[:, 2:4] = (d.astype(np.float32) * 7.5).astype(np.float16).view(np.uint8).reshape(-1, 2)
        sc = rng.integers(0, 64, (n_blocks, 8))
        blocks[:, 4:16] = pack_scales_k4(sc, sc)
    if qtype == "Q6_K":
        blocks[:, 192:208] = ((blocks[:, 192:208] & 31).astype(np.int16) - 16).astype(np.int8).view(np.uint8)
    return blocks


def tensor_bytes(rng, name: str, shape: tuple, qtype: str) -> np.ndarray:
    """The tensor's data as GGUF bytes, uint8 [..., row bytes]."""
    rows, row = int(np.prod(shape[:-1])), shape[-1]
    if qtype in BLOCKS:
        std = 1 / sqrt(row)
        return random_blocks(rng, qtype, rows * row, std).reshape(rows, -1)
    v = values(rng, name, shape).reshape(rows, row)
    if qtype == "F32":
        return v.view(np.uint8)
    if qtype == "F16":
        return v.astype(np.float16).view(np.uint8)
    if qtype == "BF16":
        from .gpu.weights import f32_to_bf16
        return f32_to_bf16(v).view(np.uint8)
    raise ValueError(f"no random data for {qtype}")


# ---- writing -------------------------------------------------------------------------------------------
def tokenizer_source(arch: str, workdir: Path) -> Path:
    """A fixture GGUF of a source checkout holding the architecture's real tokenizer (the ZAYA one
    unpacked); an installed package has none, so it asks for --tokenizer-from."""
    if not FIXTURES.is_dir():
        raise VkInferError("vkinfer synth copies a real tokenizer from a GGUF file, and this install "
                           "has no test fixtures to take it from; pass --tokenizer-from FILE.gguf "
                           f"(any GGUF with the {arch} model's tokenizer)")
    if arch in ("mamba", "mamba2"):
        return FIXTURES / "mamba-tiny-f16.gguf"
    packed = FIXTURES / "zaya-small-q4_k_m.gguf.xz"
    out = workdir / "zaya-tokenizer.gguf"
    with lzma.open(packed) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def copy_tokenizer(writer, source: Path):
    from gguf import GGUFValueType
    f = open_gguf(source, weights=False)
    for key, field in f.reader.fields.items():
        if key.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(key, f.get(key), kind, sub)


def add_params(writer, arch: str, params, extra: dict):
    from gguf import GGUFValueType
    kinds = {bool: GGUFValueType.BOOL, int: GGUFValueType.UINT32, float: GGUFValueType.FLOAT32}
    items = {f.metadata["key"]: getattr(params, f.name) for f in fields(params) if f.metadata["standard"]}
    for key, value in {**items, **extra}.items():
        writer.add_key_value(f"{arch}.{key}", value, kinds[type(value)])


def write(path, model: str, wtype: str, n_layer: int | None = None, n_vocab: int | None = None,
          seed: int = 0, tokenizer_from=None) -> Path:
    """Write the synthetic `model` in `wtype` to `path`; returns the path."""
    import gguf
    arch, params, extra, tensors = plan(model, wtype, n_layer, n_vocab)
    path = Path(path)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"{model} (synthetic, random weights)")
    if n_layer is None and n_vocab is None:        # a cut-down model gets its size computed
        writer.add_size_label(model.split("-")[-1].upper())
    writer.add_description("vkinfer synth: real shapes and types, random weights; for speed tests")
    writer.add_file_type(WEIGHT_TYPES[wtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_params(writer, arch, params, extra)
    with tempfile.TemporaryDirectory(dir=path.parent) as workdir:
        copy_tokenizer(writer, Path(tokenizer_from) if tokenizer_from else tokenizer_source(arch, Path(workdir)))
    for name, shape, qtype in tensors:
        kind = gguf.GGMLQuantizationType[qtype]
        elems, nbytes = gguf.GGML_QUANT_SIZES[kind]
        rows, row_bytes = int(np.prod(shape[:-1])), shape[-1] // elems * nbytes
        writer.add_tensor_info(name, (*shape[:-1], row_bytes), np.dtype(np.uint8), rows * row_bytes, kind)
    tmp = path.with_suffix(".part")
    writer.write_header_to_file(tmp)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in tensor_data(rng, tensors):
        writer.write_tensor_data(data)
    writer.close()
    tmp.replace(path)
    return path


def file_name(model: str, wtype: str) -> str:
    return f"{model}-{wtype}.gguf"
