"""ZAYA1 in the llama.cpp draft's GGUF layout (even blocks CCA attention, odd blocks top-1 MoE).

`ZayaNumpy` is the numpy reference executor: the ground truth the Vulkan executor is compared
with, layer by layer. It computes with the numpy twins of the ops (`*_ref` in vkinfer/ops), so
running it also exercises them; weights are dequantized to float32 once and cached.
"""
import logging
from math import sqrt
from pathlib import Path

import numpy as np

from ..gguf import GGUFFile, open_gguf
from ..gpu.weights import bf16_to_f32, decode
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


def dequantize(t) -> np.ndarray:
    """The float32 values of a GGUF tensor (TensorInfo), in numpy shape."""
    if t.type in ("F32", "F16"):
        return np.asarray(t.data, np.float32).reshape(t.shape)
    if t.type == "BF16":
        return bf16_to_f32(t.raw().view(np.uint16)).reshape(t.shape)
    return decode(t.raw().reshape(*t.shape[:-1], -1), t.type.lower()).reshape(t.shape)


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
            self._weights[name] = None if t is None else dequantize(t)
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
