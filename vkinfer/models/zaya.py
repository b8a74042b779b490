"""ZAYA1 in the llama.cpp draft's GGUF layout (even blocks CCA attention, odd blocks top-1 MoE).

`Zaya` runs it on the GPU: the engine's model class (vkinfer/engine.py), recording one batched
step per graph from the ops in vkinfer/ops over the engine's slotted state pool (KV caches, conv
state, delayed-value state). Math: zaya1.md §3.

`ZayaNumpy` is the numpy reference executor: the ground truth the Vulkan executor is compared
with, layer by layer. It computes with the numpy twins of the ops (`*_ref` in vkinfer/ops), so
running it also exercises them; weights are dequantized to float32 once and cached.
"""
import logging
from dataclasses import dataclass
from math import sqrt
from pathlib import Path

import numpy as np

from ..errors import VkInferError
from ..gguf import GGUFError, GGUFFile, OptionalShape, open_gguf, param
from ..gpu import Graph, Tensor
from ..gpu.tensor import BLOCK_TYPES, nbytes_of
from ..gpu.weights import Weight, as_weight
from ..ops import attention as att
from ..ops import cca, moe, norm, sampling_ops
from ..ops import copy as copy_ops
from ..ops import elementwise as ew
from ..ops import get_rows as gr
from ..ops import matmul as mm
from ..ops import softmax as sm
from ..ops.attention import attention_ref, head_norm_ref, kv_store_ref, rope_neox_ref
from ..ops.conv import conv1d_grouped_ref
from ..ops.elementwise import gelu_ref, res_scale_ref, swiglu_ref
from ..ops.get_rows import get_rows_ref
from ..ops.matmul import matmul_id_ref, matmul_ref
from ..ops.norm import rms_norm_ref
from ..ops.softmax import softmax_ref
from ..ops.ssm import ssm_conv_ref

log = logging.getLogger("vkinfer")

# What a token gets when the router's skip slot (the extra last slot) wins, zaya1.md §3.3 step 8:
# "zero": no MoE output (transformers >= 5, current Zyphra vLLM: the reference);
# "identity": the MoE input scaled by the skip probability (original legacy Zyphra code);
# "never": the slot is never chosen, top-1 over the real experts only (llama.cpp draft).
SKIP_MODES = ("zero", "identity", "never")
KV_TYPES = ("f32", "f16")
NEVER_BIAS = -3.0e38      # the skip slot's balancing bias in skip_mode "never": it cannot win


@dataclass
class ZayaParams:
    n_block: int = param("block_count")
    n_embd: int = param("embedding_length")
    n_head: int = param("attention.head_count")
    n_head_kv: int = param("attention.head_count_kv")
    head_dim: int = param("attention.key_length")
    value_dim: int = param("attention.value_length")
    n_rot: int = param("rope.dimension_count")
    rope_theta: float = param("rope.freq_base")
    d_conv: int = param("ssm.conv_kernel")
    n_expert: int = param("expert_count")
    n_expert_used: int = param("expert_used_count", 1)
    n_ff_expert: int = param("feed_forward_length")
    n_router: int = param("expert_feed_forward_length")
    eps: float = param("attention.layer_norm_rms_epsilon", 1e-5)
    n_ctx_train: int = param("context_length", 4096)

    @property
    def n_qk(self) -> int:
        return (self.n_head + self.n_head_kv) * self.head_dim

    @property
    def n_layers(self) -> int:
        return self.n_block


# Tensor names written by early drafts of the ZAYA converter (zaya1.md §2.4) -> final names.
ZAYA_ALIASES = {
    "cca_conv_dw.weight": "ssm_conv1d.weight", "cca_conv_dw_b.bias": "ssm_conv1d.bias",
    "zaya_router_down.weight": "ffn_gate_inp.weight", "zaya_router_down_b.bias": "ffn_gate_inp.bias",
    "zaya_router_norm.weight": "ffn_norm.weight", "zaya_router_mlp0.weight": "ffn_gate.weight",
    "zaya_router_mlp0_b.bias": "ffn_gate.bias", "zaya_router_mlp2_b.bias": "zaya_router_mlp2.bias",
    "res_scale_hs_b.bias": "res_scale_hs.bias", "res_scale_res_b.bias": "res_scale_res.bias",
}


def zaya_tensors(p: ZayaParams, n_vocab: int) -> dict:
    """name -> numpy shape (None: any size on that axis; OptionalShape: may be absent)."""
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
                b + "ssm_conv1d.weight": (p.n_qk, p.d_conv), b + "ssm_conv1d.bias": OptionalShape((p.n_qk,)),
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


class Zaya:
    """Records batched steps over the engine's slotted state pool.

    Options: skip_mode (SKIP_MODES; "zero" is the reference) and kv_type ("f32", or "f16" for
    a half-size KV cache)."""
    OPTIONS = {"skip_mode": SKIP_MODES, "kv_type": KV_TYPES}
    Params = ZayaParams
    expected_tensors = staticmethod(zaya_tensors)

    @staticmethod
    def check_file(f):
        """Early drafts' tensor names read as the final ones; the draft's 80-block layout (not a
        fork's combined blocks); the hyper-parameters agree with each other."""
        name, p = f.path.name, f.params
        for old, new in ZAYA_ALIASES.items():
            for tname in [n for n in f.tensors if n.endswith(old)]:
                renamed = tname[: -len(old)] + new
                f.tensors[renamed] = f.tensors.pop(tname)
                f.tensors[renamed].name = renamed
        if p.n_block % 2 or "blk.1.ffn_gate_inp.weight" not in f.tensors:
            raise GGUFError(f"{name}: this ZAYA1 GGUF uses a {p.n_block}-block layout "
                            "with CCA and MoE in the same block (a third-party fork's format); vkinfer "
                            "reads the llama.cpp draft's layout (even blocks CCA, odd blocks MoE). "
                            "Convert the model with that draft's convert_hf_to_gguf.py.")
        if p.n_head % p.n_head_kv:
            raise GGUFError(f"{name}: zaya.attention.head_count {p.n_head} is not a multiple "
                            f"of head_count_kv {p.n_head_kv}")
        if p.n_rot > p.head_dim or p.n_rot % 2:
            raise GGUFError(f"{name}: zaya.rope.dimension_count = {p.n_rot} must be even and at "
                            f"most the head size (attention.key_length = {p.head_dim})")
        if p.n_expert_used > p.n_expert:
            raise GGUFError(f"{name}: zaya.expert_used_count = {p.n_expert_used} is more than "
                            f"expert_count = {p.n_expert}")
        grouped = f.tensors.get("blk.0.cca_conv_grp.weight")
        taps = grouped.shape[-1] if grouped is not None and len(grouped.shape) == 3 else 1
        if (p.head_dim > cca.MAX_HEAD_DIM or taps > cca.MAX_GROUPED_TAPS
                or p.head_dim * taps > cca.MAX_DIM_TAPS or p.d_conv - 1 + taps - 1 > cca.TOKENS_PER_GROUP
                or max(p.head_dim, p.value_dim) > att.MAX_HEAD_DIM):
            raise GGUFError(f"{name}: vkinfer's CCA and attention kernels hold head sizes up to "
                            f"{cca.MAX_HEAD_DIM}, head size x grouped conv taps up to {cca.MAX_DIM_TAPS} "
                            f"and depthwise + grouped conv taps up to {cca.TOKENS_PER_GROUP + 2}; this model has "
                            f"attention.key_length {p.head_dim}, value_length {p.value_dim}, "
                            f"{p.d_conv} depthwise and {taps} grouped taps")
        vocab = f.value("zaya.vocab_size", "int", None)
        if vocab is not None and vocab < f.n_vocab:
            raise GGUFError(f"{name}: zaya.vocab_size = {vocab} but token_embd.weight has "
                            f"{f.n_vocab} rows")

    @staticmethod
    def slot_state_bytes(f, n_ctx: int, kv_type: str = "f32", **options) -> tuple:
        """(recurrent state bytes, KV-cache bytes) of one slot at context n_ctx: per CCA block
        the conv state, the delayed value, and K and V (each by its own head width)."""
        p = f.params
        n_cca = len(range(0, p.n_block, 2))
        grouped_taps = f.tensors["blk.0.cca_conv_grp.weight"].shape[-1]
        conv_width = p.d_conv - 1 + grouped_taps - 1
        kv = n_cca * n_ctx * p.n_head_kv * (p.head_dim + p.value_dim) * (2 if kv_type == "f16" else 4)
        v2_width = f.tensors["blk.0.cca_val_proj2.weight"].shape[0]
        return 4 * n_cca * (p.n_qk * conv_width + v2_width), kv

    @staticmethod
    def max_context(dev, f, kv_type: str = "f32", **options) -> int | None:
        """The longest context the attention kernel serves right on this device (None: no limit
        short of memory): a CPU device's llvmpipe cuts long loops (ops.attention.max_keys)."""
        return att.max_keys(dev, f.params.head_dim, f.params.value_dim, kv_type)

    def __init__(self, dev, f, weights: dict, n_ctx: int, max_rows: int, skip_mode: str = "zero",
                 kv_type: str = "f32"):
        if skip_mode not in SKIP_MODES:
            raise ValueError(f"Zaya: skip_mode {skip_mode!r} is not one of {', '.join(SKIP_MODES)}")
        if kv_type not in KV_TYPES:
            raise ValueError(f"Zaya: kv_type {kv_type!r} is not one of {', '.join(KV_TYPES)}")
        self.dev, self.p, self.w = dev, f.params, weights
        self.n_ctx, self.skip_mode, self.kv_type = n_ctx, skip_mode, kv_type
        self.n_vocab = f.n_vocab
        p = self.p
        self.n_taps = p.n_block + 1          # the residual after every block's merge, and the last
        self.cca_blocks = list(range(0, p.n_block, 2))
        self.moe_blocks = list(range(1, p.n_block, 2))
        self.grouped_taps = weights["blk.0.cca_conv_grp.weight"].shape[-1]
        self.conv_width = p.d_conv - 1 + self.grouped_taps - 1
        self.v1_width = weights["blk.0.cca_val_proj1.weight"].shape[0]
        self.v2_width = weights["blk.0.cca_val_proj2.weight"].shape[0]
        if self.v1_width + self.v2_width != p.n_head_kv * p.value_dim:
            raise VkInferError(f"{f.path.name}: value projections of {self.v1_width} + {self.v2_width} rows "
                               f"do not fill {p.n_head_kv} kv heads of {p.value_dim}")
        self._prepare_weights(f.path.name)
        self.output, self.output_norm = weights["token_embd.weight"], weights["output_norm.weight"]
        # Scratch for up to max_rows token rows, shared by every block and every graph. "c" holds
        # each row's stacked projections q||k, v1 and W2 x (cca_qkv's input).
        H, Hkv, dh, dv, E = p.n_head, p.n_head_kv, p.head_dim, p.value_dim, p.n_expert
        B = max_rows
        shapes = {"h": (B, p.n_embd), "res": (B, p.n_embd), "x": (B, p.n_embd),
                  "q_raw": (B, H * dh), "k_raw": (B, Hkv * dh),
                  "c": (B, p.n_qk + self.v1_width + self.v2_width),
                  "q": (B, H, dh), "k": (B, Hkv, dh), "v1": (B, self.v1_width), "v2": (B, self.v2_width),
                  "v": (B, Hkv, dv), "attn": (B, H, dv),
                  "router0": (B, p.n_router), "router1": (B, p.n_router),
                  "z0": (B, p.n_router), "z1": (B, p.n_router),
                  "probs": (B, E + 1), "biased": (B, E + 1),
                  "gate_up": (B, 2 * p.n_ff_expert), "act": (B, p.n_ff_expert)}
        self.scratch = {k: dev.empty(shape, "f32", name=k) for k, shape in shapes.items()}
        # The chosen slot of every token in every MoE block (read back only by log_skips).
        self.experts = dev.empty((max(len(self.moe_blocks), 1), B), "u32", name="experts")
        # Their tokens grouped by expert, for a chunk where matmul_id's CPU kernel wants that.
        self.expert_tiles = dev.empty((moe.table_words(B, E),), "u32", name="expert_tiles")

    def _prepare_weights(self, file_name: str):
        """Per-block weights in the form the graph uses, made once at load time."""
        p, w, dev = self.p, self.w, self.dev
        self.wqk, self.conv_dw, self.conv_grp, self.router_biases = {}, {}, {}, {}
        for l in self.cca_blocks:
            b = f"blk.{l}."
            # The four projections of x as one weight in one buffer where they share a type: one
            # matmul writes c = q||k, v1, W2 x (val_proj2 of this token, the next one's value).
            stacked = self._stack([b + n + ".weight" for n in ("attn_q", "attn_k", "cca_val_proj1",
                                                               "cca_val_proj2")])
            if stacked is not None:
                self.wqk[l] = stacked
            self.conv_dw[l] = self._f32_tensor(b + "ssm_conv1d.weight", file_name)
            # the grouped conv's weight as cca_qkv reads it (cca.repack_grouped)
            grp = self.dev.read(self._f32_tensor(b + "cca_conv_grp.weight", file_name))
            self.conv_grp[l] = dev.upload(cca.repack_grouped(grp, p.n_head + p.n_head_kv),
                                          name=b + "cca_conv_grp.repacked")
        # The router MLP's three matrices in one buffer, for the fused router kernel.
        self.router_w = {}
        for l in self.moe_blocks:
            b = f"blk.{l}."
            stacked = self._stack([b + "ffn_gate.weight", b + "zaya_router_mlp2.weight",
                                   b + "zaya_router_mlp4.weight"])
            if (stacked is not None and p.n_router % 4 == 0
                    and max(p.n_router, p.n_expert + 1) <= moe.ROUTER_MAX):
                self.router_w[l] = stacked
        for l in self.moe_blocks:
            name = f"blk.{l}.zaya_router_biases.weight"
            if self.skip_mode == "never":
                biases = dev.read(w[name])
                biases[p.n_expert] = NEVER_BIAS
                self.router_biases[l] = dev.upload(biases.astype(np.float32), name=name + ".never")
            else:
                self.router_biases[l] = w[name]

    def _stack(self, names: list) -> Weight | None:
        """The matrices `names` (same type and columns) copied on the device into one buffer, as
        one [sum of rows, cols] Weight of one part, so one dispatch reads them all; their entries
        in the weights become views into it and their own buffers are freed. None (nothing
        changed) where the types or columns differ, a matrix is split, a matrix's bytes are not
        whole words, a matrix but the last is not whole superblocks (tensor.py: the next would
        start inside one), or the stack would exceed one binding."""
        ws = [as_weight(self.w[n]) for n in names]
        dtype, cols = ws[0].dtype, ws[0].shape[1]
        if any(w.dtype != dtype or w.shape[1] != cols or len(w.parts) != 1 for w in ws):
            return None
        parts = [w.parts[0][1] for w in ws]
        plain = (lambda n: n // BLOCK_TYPES[dtype][0] * BLOCK_TYPES[dtype][1]) if dtype in BLOCK_TYPES \
            else (lambda n: nbytes_of(dtype, n))
        rows = sum(t.shape[0] for t in parts)
        if (any(plain(t.numel) % 4 or t.byte_offset % 4 for t in parts)
                or any(nbytes_of(dtype, t.numel) != plain(t.numel) for t in parts[:-1])
                or nbytes_of(dtype, rows * cols) > self.dev.max_binding_bytes):
            return None
        out = self.dev.empty((rows, cols), dtype, name="+".join(names))
        r0 = 0
        for name, t in zip(names, parts):
            self.dev.copy_words(t.buf, t.word_offset, out.buf, r0 * plain(cols) // 4, t.nbytes // 4)
            self.w[name] = out.slice(0, r0, r0 + t.shape[0])
            if t.offset == 0 and t.buf.nbytes - t.nbytes < 16:      # the matrix's own buffer
                t.buf.kt.destroy()
            r0 += t.shape[0]
        return Weight(((0, out),), (rows, cols), dtype)

    def _f32_tensor(self, name: str, file_name: str) -> Tensor:
        """An F32 tensor for the conv ops: kept as is, or (F16/BF16 weights) cast once with ops.copy."""
        t = self.w[name]
        if isinstance(t, Tensor) and t.dtype == "f32":
            return t
        wt = as_weight(t)
        if wt.dtype not in copy_ops.VARIANT:
            raise VkInferError(f"{file_name}: {name} is {wt.dtype.upper()}; ZAYA keeps it F32, F16 or BF16")
        out = self.dev.empty(wt.shape, "f32", name=name + ".f32")
        g = Graph(self.dev, "cast " + name)
        for start, part in wt.parts:
            copy_ops.copy(g, part, out=out.slice(0, start, start + part.shape[0]))
        g.run()
        return out

    def state_fields(self) -> dict:
        """Per slot and CCA block: "conv" [n_qk, conv_width] (raw q||k of the last tokens, oldest
        first), "prev_x" [v2_width, 1] (the previous token's normalised input as the next value
        needs it: through val_proj2, W2 x), and the caches "k" [n_ctx, n_head_kv, head_dim] and
        "v" [n_ctx, n_head_kv, value_dim] in kv_type."""
        from ..engine import StateField
        p, n = self.p, len(self.cca_blocks)
        return {"conv": StateField(n, (p.n_qk, self.conv_width)),
                "prev_x": StateField(n, (self.v2_width, 1)),
                "k": StateField(n, (self.n_ctx, p.n_head_kv, p.head_dim), self.kv_type, positional=True),
                "v": StateField(n, (self.n_ctx, p.n_head_kv, p.value_dim), self.kv_type, positional=True)}

    # ---- graph ----------------------------------------------------------------------------------
    def build(self, g: Graph, state, inputs: dict, taps: Tensor | None = None) -> Tensor:
        """Record one step: inputs["ids"] u32 [rows] of inputs["n_seq"] sequences -> the residual
        [rows, n_embd] after the last merge. With `taps` [n_block + 1, rows, n_embd], the residual
        after each block's merge is copied there (ZayaNumpy's ("res", l) entries)."""
        p, w = self.p, self.w
        T = inputs["ids"].shape[0]
        s = {k: t.slice(0, 0, T) for k, t in self.scratch.items()}
        x, h, res = s["x"], s["h"], s["res"]
        g.block = "embed"
        gr.get_rows(g, w["token_embd.weight"], inputs["ids"], out=h)
        router, combine = None, {}
        for l in range(p.n_block):
            b = f"blk.{l}."
            g.block = f"{'cca' if l % 2 == 0 else 'moe'} {l}"
            self._merge_norm(g, b, h, res, x, w[b + "attn_norm.weight"], first=l == 0, **combine)
            if taps is not None:
                copy_ops.copy(g, res, out=taps[l])
            if l % 2 == 0:
                self._cca(g, l, s, state, inputs, out=h)
                combine = {}
            else:
                router, combine = self._moe(g, l, x, router, s, out=h)
        g.block = "output"
        self._merge_norm(g, "", h, res, x, self.output_norm, first=False, **combine)
        if taps is not None:
            copy_ops.copy(g, res, out=taps[p.n_block])
        return res

    def _merge_norm(self, g, b, h, res, x, norm_w, first, probs=None, expert_ids=None):
        """The delayed residual merge before every norm (zaya1.md §3.1), in place on res, and
        the norm into x; with probs and expert_ids, h is first weighted as moe_combine would."""
        w = self.w
        rs = None if first else (w[b + "res_scale_res.bias"], w[b + "res_scale_res.weight"])
        norm.merge_norm(g, h, res, (w[b + "res_scale_hs.bias"], w[b + "res_scale_hs.weight"]), rs,
                        norm_w, self.p.eps, x=x, probs=probs, expert_ids=expert_ids)

    def _cca(self, g, l, s, state, inputs, out):
        """CCA attention, zaya1.md §3.2, reading x = s["x"]; writes out [rows, n_embd]."""
        p, w, b, i = self.p, self.w, f"blk.{l}.", l // 2
        H, Hkv, dh = p.n_head, p.n_head_kv, p.head_dim
        slots, B = inputs["slots"], inputs["n_seq"]
        x = s["x"]
        T = x.shape[0]
        if l in self.wqk:
            c = mm.matmul(g, self.wqk[l], x, out=s["c"])
        else:                       # projections of different types: one matmul each, then concat
            parts = [mm.matmul(g, w[b + n + ".weight"], x, out=s[k]) for n, k in
                     (("attn_q", "q_raw"), ("attn_k", "k_raw"), ("cca_val_proj1", "v1"), ("cca_val_proj2", "v2"))]
            c = copy_ops.concat(g, parts, axis=1, out=s["c"])
        # the convs with their state, the means, head norms, RoPE, and the values (with W2 x
        # of the previous token from the state) in one dispatch
        for (lo, cpart), (_, vpart) in zip(state.parts("conv", i), state.parts("prev_x", i)):
            cca.cca_qkv(g, c, cpart, vpart, self.conv_dw[l], w.get(b + "ssm_conv1d.bias"),
                        self.conv_grp[l], w[b + "cca_conv_grp.bias"], w[b + "cca_k_scale.weight"],
                        inputs["positions"], H, Hkv, p.n_rot, p.rope_theta, self.v1_width,
                        q_out=s["q"], k_out=s["k"], v_out=s["v"].reshape(T, Hkv * p.value_dim),
                        slots=slots, n_seq=B, slot_lo=lo)
        v = s["v"]
        for (lo, k_cache), (_, v_cache) in zip(state.parts("k", i), state.parts("v", i)):
            att.kv_store(g, s["k"], v, k_cache, v_cache, inputs["positions"], slots, slot_lo=lo)
        for (lo, k_cache), (_, v_cache) in zip(state.parts("k", i), state.parts("v", i)):
            o = att.attention(g, s["q"], k_cache, v_cache, inputs["positions"], 1.0 / sqrt(dh), out=s["attn"],
                              slots=slots, slot_lo=lo)
        mm.matmul(g, w[b + "attn_output.weight"], o.reshape(T, H * p.value_dim), out=out)

    def _moe(self, g, l, x, router, s, out):
        """Top-1 MoE, zaya1.md §3.3; returns the router state (post-EDA) for the next MoE block
        and, unless skip_mode is "identity", the probs and expert ids the next merge_norm uses to
        weight the expert output written to out."""
        p, w, b, m = self.p, self.w, f"blk.{l}.", l // 2
        T = x.shape[0]
        r = s[f"router{m % 2}"]
        mm.matmul(g, w[b + "ffn_gate_inp.weight"], x, out=r)
        eda = w.get(b + "zaya_router_eda.weight")          # absent on the first MoE block
        if router is None or eda is None:
            router = eda = None
        experts = self.experts[m].slice(0, 0, T)
        if l in self.router_w:
            probs, _ = moe.router(g, r, w[b + "ffn_gate_inp.bias"], router, eda, w[b + "ffn_norm.weight"],
                                  self.router_w[l], w[b + "ffn_gate.bias"], w[b + "zaya_router_mlp2.bias"],
                                  self.router_biases[l], p.eps, probs=s["probs"], expert_ids=experts)
        else:
            probs = self._router_unfused(g, b, r, router, eda, s, self.router_biases[l], experts)
        return self._experts(g, b, x, experts, probs, s, out, r)

    def _router_unfused(self, g, b, r, router, eda, s, biases, experts):
        """moe.router's steps one op each (router matrices of different types)."""
        p, w = self.p, self.w
        ew.add(g, r, w[b + "ffn_gate_inp.bias"], out=r)
        if router is not None:
            ew.mul(g, router, eda, out=router)             # the previous state is not needed after
            ew.add(g, r, router, out=r)
        z = norm.rms_norm(g, r, w[b + "ffn_norm.weight"], p.eps, out=s["z0"])
        for name, dst in (("ffn_gate", s["z1"]), ("zaya_router_mlp2", s["z0"])):
            mm.matmul(g, w[b + name + ".weight"], z, out=dst)
            ew.add(g, dst, w[b + name + ".bias"], out=dst)
            z = ew.gelu(g, dst, out=dst)
        probs = mm.matmul(g, w[b + "zaya_router_mlp4.weight"], z, out=s["probs"])
        sm.softmax(g, probs, out=probs)
        biased = ew.add(g, probs, biases, out=s["biased"])
        sampling_ops.argmax(g, biased, out=experts)
        return probs

    def _experts(self, g, b, x, experts, probs, s, out, r):
        """The chosen expert's SwiGLU MLP into out, then the combine (or its hand-over)."""
        w, T, E = self.w, x.shape[0], self.p.n_expert
        tiles = None
        if mm.lane_grouped(g, T, E):
            tile = moe.tile_tokens(T, E)
            n, words = moe.table_shape(T, E, tile)
            table = self.expert_tiles.slice(0, 0, n * words).reshape(n, words)
            tiles = moe.expert_tiles(g, experts, E, tile, out=table)
        gate_up = mm.matmul_id(g, w[b + "ffn_gate_up_exps.weight"], x, experts, out=s["gate_up"], tiles=tiles)
        act = ew.swiglu_rows(g, gate_up, out=s["act"])
        mm.matmul_id(g, w[b + "ffn_down_exps.weight"], act, experts, out=out, tiles=tiles)
        if self.skip_mode != "identity":       # the next merge_norm weights out by probs
            return r, {"probs": probs, "expert_ids": experts}
        moe.moe_combine(g, out, probs, experts, skip="identity", x=x, out=out)
        return r, {}

    def log_skips(self, T: int, n_past: int) -> dict:
        """After a run of T tokens starting at position n_past: {block: [positions]} where the
        skip slot won, also logged at debug level (zaya1.md §3.3 step 8). Reads the chosen slots
        back from the device: for debugging, not for every step."""
        chosen = self.dev.read(self.experts)
        found = {}
        for m, l in enumerate(self.moe_blocks):
            at = np.flatnonzero(chosen[m, :T] >= self.p.n_expert)
            if at.size:
                found[l] = (n_past + at).tolist()
                log.debug("zaya block %d: skip slot chosen at positions %s (skip_mode=%s)",
                          l, found[l], self.skip_mode)
        return found


# ---- numpy executor ------------------------------------------------------------------------------
class ZayaNumpy:
    """forward(state, ids, collect) runs a chunk of T tokens of one sequence and returns the logits
    [T, n_vocab]; the state carries everything between chunks, so any chunking gives the same
    result. With `collect` a list, it appends (name, block, array) for every sub-layer:

      ("res", l, [T, n_embd])   residual after the merge at the start of block l
                                (l = n_block: the final merge before output_norm)
      ("x", l, [T, n_embd])     normalised input of block l
      ("h", l, [T, n_embd])     output of block l (added to the residual at block l + 1)
      CCA blocks:  ("q", l, [T, n_head, head_dim]), ("k", l, [T, n_head_kv, head_dim]) after norm
                   and RoPE, ("v", l, [T, n_head_kv, value_dim]), ("attn", l, [T, n_head * value_dim])
      MoE blocks:  ("router", l, [T, n_router]) router state after EDA, ("probs", l, [T, n_expert + 1]),
                   ("expert", l, [T] int) chosen slot (n_expert = the skip slot)
    and at the end ("y", n_block, [T, n_embd]), the input of the output head.
    """

    def __init__(self, gguf_file, skip_mode: str = "zero"):
        f = gguf_file if isinstance(gguf_file, GGUFFile) else open_gguf(Path(gguf_file))
        if f.arch != "zaya" or f.params is None:
            raise ValueError(f"ZayaNumpy: {f.path.name} is not a ZAYA model file opened with its weights")
        self.file, self.p = f, f.params
        self.skip_mode = skip_mode
        self._check_skip_mode()
        self._weights = {}
        self.embd = self.weight("token_embd.weight")
        self.n_vocab = self.embd.shape[0]
        # state columns = (depthwise taps - 1) + (grouped taps - 1): raw q||k of that many tokens back
        self.grouped_taps = f.tensors["blk.0.cca_conv_grp.weight"].shape[-1]
        self.conv_width = self.p.d_conv - 1 + self.grouped_taps - 1

    def weight(self, name: str):
        """Dequantized float32 tensor `name`, or None for an absent optional tensor."""
        if name not in self._weights:
            t = self.file.tensors.get(name)
            self._weights[name] = None if t is None else t.dequantize()
        return self._weights[name]

    def _check_skip_mode(self):
        if self.skip_mode not in SKIP_MODES:
            raise ValueError(f"ZayaNumpy: skip_mode {self.skip_mode!r} is not one of "
                             f"{', '.join(SKIP_MODES)}")

    # ---- state ----------------------------------------------------------------------------------
    def new_state(self, n_ctx: int | None = None) -> dict:
        """Zeroed state of one sequence: per CCA block l, "conv.l" [n_qk, conv_width] (raw q||k of
        the previous tokens, oldest first), "prev_x.l" [n_embd] (normalised input of the previous
        token), "k.l" / "v.l" [n_ctx, n_head_kv, head_dim / value_dim]; and "n_past"."""
        p = self.p
        n_ctx = n_ctx or min(p.n_ctx_train, 4096)
        state = {"n_past": 0}
        for l in range(0, p.n_block, 2):
            state[f"conv.{l}"] = np.zeros((p.n_qk, self.conv_width), np.float32)
            state[f"prev_x.{l}"] = np.zeros(p.n_embd, np.float32)
            state[f"k.{l}"] = np.zeros((n_ctx, p.n_head_kv, p.head_dim), np.float32)
            state[f"v.{l}"] = np.zeros((n_ctx, p.n_head_kv, p.value_dim), np.float32)
        return state

    @staticmethod
    def copy_state(state: dict) -> dict:
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in state.items()}

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, state: dict, ids, collect: list | None = None) -> np.ndarray:
        self._check_skip_mode()
        p, eps = self.p, self.p.eps
        ids = np.asarray(ids, np.int64).reshape(-1)
        T, n_past = len(ids), state["n_past"]
        n_ctx = state["k.0"].shape[0]
        if T == 0:
            raise ValueError("ZayaNumpy.forward: no tokens")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError(f"ZayaNumpy.forward: token ids must be in 0..{self.n_vocab - 1}")
        if n_past + T > n_ctx:
            raise ValueError(f"ZayaNumpy.forward: {n_past} + {T} tokens exceed the state's n_ctx {n_ctx}")
        note = collect.append if collect is not None else (lambda item: None)
        positions = n_past + np.arange(T)

        h, res, router = get_rows_ref(self.embd, ids), None, None
        for l in range(p.n_block):
            b = f"blk.{l}."
            hs = res_scale_ref(h, self.weight(b + "res_scale_hs.bias"),
                               self.weight(b + "res_scale_hs.weight"))
            if l == 0:
                res = hs
            else:
                res = res_scale_ref(res, self.weight(b + "res_scale_res.bias"),
                                    self.weight(b + "res_scale_res.weight")) + hs
            x = rms_norm_ref(res, self.weight(b + "attn_norm.weight"), eps)
            note(("res", l, res))
            note(("x", l, x))
            if l % 2 == 0:
                h = self._cca(l, x, positions, state, note)
            else:
                h, router = self._moe(l, x, router, positions, note)
            note(("h", l, h))

        hs = res_scale_ref(h, self.weight("res_scale_hs.bias"), self.weight("res_scale_hs.weight"))
        res = res_scale_ref(res, self.weight("res_scale_res.bias"), self.weight("res_scale_res.weight")) + hs
        y = rms_norm_ref(res, self.weight("output_norm.weight"), eps)
        note(("res", p.n_block, res))
        note(("y", p.n_block, y))
        state["n_past"] = n_past + T
        return matmul_ref(self.embd, y)

    def _cca(self, l, x, positions, state, note):
        p, b, T = self.p, f"blk.{l}.", len(x)
        H, Hkv, dh, dv = p.n_head, p.n_head_kv, p.head_dim, p.value_dim
        q_raw = matmul_ref(self.weight(b + "attn_q.weight"), x)           # [T, H*dh]
        k_raw = matmul_ref(self.weight(b + "attn_k.weight"), x)           # [T, Hkv*dh]
        qh, kh = q_raw.reshape(T, H, dh), k_raw.reshape(T, Hkv, dh)
        per_kv = H // Hkv
        mean_q = 0.5 * (qh + np.repeat(kh, per_kv, axis=1))
        mean_k = 0.5 * (qh.reshape(T, Hkv, per_kv, dh).mean(axis=2) + kh)

        # causal depthwise conv over [state | q||k] (T + grouped_taps - 1 outputs), then grouped
        c = np.concatenate([q_raw, k_raw], axis=1)
        d, state[f"conv.{l}"] = ssm_conv_ref(c, state[f"conv.{l}"], self.weight(b + "ssm_conv1d.weight"),
                                             self.weight(b + "ssm_conv1d.bias"))
        y = conv1d_grouped_ref(d, self.weight(b + "cca_conv_grp.weight"),
                               self.weight(b + "cca_conv_grp.bias"), groups=H + Hkv)     # [T, n_qk]
        q = y[:, :H * dh].reshape(T, H, dh) + mean_q
        k = y[:, H * dh:].reshape(T, Hkv, dh) + mean_k
        q = rope_neox_ref(head_norm_ref(q, sqrt(dh)), positions, p.n_rot, p.rope_theta)
        k = rope_neox_ref(head_norm_ref(k, sqrt(dh), self.weight(b + "cca_k_scale.weight")),
                          positions, p.n_rot, p.rope_theta)

        # values: KV head 0 from this token's x, KV head 1 from the previous token's x
        x_prev = np.concatenate([state[f"prev_x.{l}"][None], x[:-1]])
        state[f"prev_x.{l}"] = x[-1].copy()
        v = np.concatenate([matmul_ref(self.weight(b + "cca_val_proj1.weight"), x),
                            matmul_ref(self.weight(b + "cca_val_proj2.weight"), x_prev)], axis=1)
        v = v.reshape(T, Hkv, dv)

        n_past = int(positions[0])
        state[f"k.{l}"], state[f"v.{l}"] = kv_store_ref(k, v, state[f"k.{l}"], state[f"v.{l}"], n_past)
        o = attention_ref(q, state[f"k.{l}"], state[f"v.{l}"], n_past, 1.0 / sqrt(dh))
        o = o.reshape(T, H * dv)
        for name, value in (("q", q), ("k", k), ("v", v), ("attn", o)):
            note((name, l, value))
        return matmul_ref(self.weight(b + "attn_output.weight"), o)

    def _moe(self, l, x, router, positions, note):
        p, b, T = self.p, f"blk.{l}.", len(x)
        r = matmul_ref(self.weight(b + "ffn_gate_inp.weight"), x) + self.weight(b + "ffn_gate_inp.bias")
        eda = self.weight(b + "zaya_router_eda.weight")        # absent on the first MoE block
        if router is not None and eda is not None:
            r = r + router * eda
        z = rms_norm_ref(r, self.weight(b + "ffn_norm.weight"), p.eps)
        z = gelu_ref(matmul_ref(self.weight(b + "ffn_gate.weight"), z) + self.weight(b + "ffn_gate.bias"))
        z = gelu_ref(matmul_ref(self.weight(b + "zaya_router_mlp2.weight"), z)
                     + self.weight(b + "zaya_router_mlp2.bias"))
        probs = softmax_ref(matmul_ref(self.weight(b + "zaya_router_mlp4.weight"), z))    # [T, E + 1]

        # top-1 on the biased probabilities; the expert output is weighted by the unbiased one
        skip = p.n_expert
        biased = probs + self.weight(b + "zaya_router_biases.weight")
        choice = np.argmax(biased[:, :skip] if self.skip_mode == "never" else biased, axis=1)
        skipped = choice == skip
        if skipped.any():
            log.debug("zaya block %d: skip slot chosen at positions %s (skip_mode=%s)",
                      l, positions[skipped].tolist(), self.skip_mode)

        # matmul_id_ref gives zero rows for the skip slot (no such expert)
        gate_up = matmul_id_ref(self.weight(b + "ffn_gate_up_exps.weight"), x, choice)
        act = swiglu_ref(gate_up[:, :p.n_ff_expert], gate_up[:, p.n_ff_expert:])
        chosen_prob = probs[np.arange(T), choice][:, None]
        h = matmul_id_ref(self.weight(b + "ffn_down_exps.weight"), act, choice) * chosen_prob
        if self.skip_mode == "identity":
            h[skipped] = x[skipped] * chosen_prob[skipped]
        for name, value in (("router", r), ("probs", probs), ("expert", choice)):
            note((name, l, value))
        return h, r
