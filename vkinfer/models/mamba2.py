"""Mamba-2 (general.architecture = "mamba2") in llama.cpp's GGUF layout: the hyper-parameters,
expected tensors, the per-slot state, the GPU graph, and a numpy executor from the ops' twins.

Per layer (transformers' Mamba2Mixer, torch path): h = rms_norm(x); ssm_in(h) = z | xBC | dt
(widths d_inner, d_inner + 2·G·N, H); xBC through a causal depthwise conv with bias and SiLU
(carried as conv state); x | B | C, B and C per group (head h reads group h // (H / G));
dt = softplus(dt + dt_bias); per head a scalar A and D, state [H, P, N]; y = the scan, then
y·silu(z) RMS-normed per group of d_inner / G channels times ssm_norm; x += ssm_out(y)."""
from dataclasses import dataclass

import numpy as np

from ..gguf import GGUFError, OptionalShape, param
from ..gpu import Graph, Tensor
from ..ops import copy as copy_ops
from ..ops import get_rows as gr
from ..ops import matmul as mm
from ..ops import norm, ssm
from .mamba import MambaNumpy


@dataclass
class Mamba2Params:
    n_embd: int = param("embedding_length")
    n_layer: int = param("block_count")
    d_conv: int = param("ssm.conv_kernel", lo=2)
    d_inner: int = param("ssm.inner_size")
    d_state: int = param("ssm.state_size")
    n_heads: int = param("ssm.time_step_rank")
    n_groups: int = param("ssm.group_count", 1)
    eps: float = param("attention.layer_norm_rms_epsilon", 1e-5)
    n_ctx_train: int = param("context_length", 1 << 20)

    @property
    def n_layers(self) -> int:
        return self.n_layer

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def head_dim(self) -> int:
        return self.d_inner // self.n_heads


def mamba2_tensors(p: Mamba2Params, n_vocab: int) -> dict:
    """name -> numpy shape (OptionalShape: may be absent; a tied output head)."""
    d, di, H = p.n_embd, p.d_inner, p.n_heads
    want = {"token_embd.weight": (n_vocab, d), "output_norm.weight": (d,),
            "output.weight": OptionalShape((n_vocab, d))}
    for i in range(p.n_layer):
        b = f"blk.{i}."
        want.update({
            b + "attn_norm.weight": (d,), b + "ssm_in.weight": (di + p.conv_dim + H, d),
            b + "ssm_conv1d.weight": (p.conv_dim, p.d_conv), b + "ssm_conv1d.bias": (p.conv_dim,),
            b + "ssm_dt.bias": (H,), b + "ssm_a": (H, 1), b + "ssm_d": (H, 1),
            b + "ssm_norm.weight": (p.n_groups, di // p.n_groups), b + "ssm_out.weight": (d, di)})
    return want


class Mamba2:
    """Records batched steps over the engine's slotted state pool."""
    OPTIONS = {}
    Params = Mamba2Params
    expected_tensors = staticmethod(mamba2_tensors)

    @staticmethod
    def check_file(f):
        p, name = f.params, f.path.name
        if p.d_inner % p.n_heads:
            raise GGUFError(f"{name}: mamba2.ssm.inner_size {p.d_inner} is not a multiple of the "
                            f"{p.n_heads} heads (ssm.time_step_rank)")
        if p.n_heads % p.n_groups:
            raise GGUFError(f"{name}: mamba2.ssm.group_count {p.n_groups} does not divide the "
                            f"{p.n_heads} heads")
        if p.d_state > ssm.MAX_D_STATE:
            raise GGUFError(f"{name}: mamba2.ssm.state_size {p.d_state} is over {ssm.MAX_D_STATE}")

    @staticmethod
    def slot_state_bytes(f, n_ctx: int, **options) -> tuple:
        p = f.params
        return 4 * p.n_layer * (p.conv_dim * (p.d_conv - 1) + p.d_inner * p.d_state), 0

    def __init__(self, dev, f, weights: dict, n_ctx: int, max_rows: int):
        self.dev, self.p, self.w = dev, f.params, weights
        self.n_taps = f.params.n_layer
        self.output = weights.get("output.weight", weights["token_embd.weight"])
        self.output_norm = weights["output_norm.weight"]
        p = self.p
        # A, D as [H] views of their [H, 1] tensors; the scratch for max_rows token rows.
        self.A = {i: weights[f"blk.{i}.ssm_a"].reshape(p.n_heads) for i in range(p.n_layer)}
        self.D = {i: weights[f"blk.{i}.ssm_d"].reshape(p.n_heads) for i in range(p.n_layer)}
        shapes = {"x": p.n_embd, "zxbcdt": p.d_inner + p.conv_dim + p.n_heads,
                  "xbc": p.conv_dim, "dt": p.n_heads, "y": p.d_inner, "yn": p.d_inner}
        self.scratch = {k: dev.empty((max_rows, n), "f32", name=k) for k, n in shapes.items()}

    def state_fields(self) -> dict:
        from ..engine import StateField
        p = self.p
        return {"conv": StateField(p.n_layer, (p.conv_dim, p.d_conv - 1)),
                "scan": StateField(p.n_layer, (p.d_inner, p.d_state))}

    def build(self, g: Graph, state, inputs: dict, taps: Tensor | None = None) -> Tensor:
        p, w = self.p, self.w
        ids, slots, n_seq = inputs["ids"], inputs["slots"], inputs["n_seq"]
        T = ids.shape[0]
        s = {k: t.slice(0, 0, T) for k, t in self.scratch.items()}
        di, cd, GN = p.d_inner, p.conv_dim, p.n_groups * p.d_state
        g.block = "embed"
        x = gr.get_rows(g, w["token_embd.weight"], ids, out=s["x"])
        for layer in range(p.n_layer):
            g.block = f"layer {layer}"
            b = f"blk.{layer}."
            zxbcdt = mm.matmul(g, w[b + "ssm_in.weight"], x, out=s["zxbcdt"],
                               norm=w[b + "attn_norm.weight"], eps=p.eps)
            for lo, part in state.parts("conv", layer):
                xbc = ssm.ssm_conv(g, zxbcdt.slice(1, di, di + cd), part, w[b + "ssm_conv1d.weight"],
                                   w[b + "ssm_conv1d.bias"], out=s["xbc"], silu=True, slots=slots,
                                   n_seq=n_seq, slot_lo=lo)
            dt = zxbcdt.slice(1, di + cd, di + cd + p.n_heads)
            for lo, part in state.parts("scan", layer):
                y = ssm.ssm_scan_heads(g, xbc.slice(1, 0, di), dt, self.A[layer], xbc.slice(1, di, di + GN),
                                       xbc.slice(1, di + GN, di + 2 * GN), self.D[layer], part,
                                       w[b + "ssm_dt.bias"], p.n_groups, out=s["y"], slots=slots,
                                       n_seq=n_seq, slot_lo=lo)
            yn = norm.gated_group_norm(g, y, zxbcdt.slice(1, 0, di), w[b + "ssm_norm.weight"], p.n_groups,
                                       p.eps, out=s["yn"])
            mm.matmul(g, w[b + "ssm_out.weight"], yn, out=x, accumulate=True)     # the residual add
            if taps is not None:
                copy_ops.copy(g, x, out=taps[layer])
        return x


# ---- numpy executor ------------------------------------------------------------------------------
class Mamba2Numpy(MambaNumpy):
    """The same model on the CPU with the ops' numpy twins; state carried like the GPU's (laid
    out as Mamba-1's, the conv over all of xBC)."""

    @property
    def conv_channels(self) -> int:
        return self.p.conv_dim

    def forward(self, state: dict, ids, collect: list | None = None) -> np.ndarray:
        p, w = self.p, self.w
        di, cd, GN = p.d_inner, p.conv_dim, p.n_groups * p.d_state
        x = gr.get_rows_ref(w["token_embd.weight"], np.asarray(ids))
        for layer in range(p.n_layer):
            b = f"blk.{layer}."
            h = norm.rms_norm_ref(x, w[b + "attn_norm.weight"], p.eps)
            zxbcdt = mm.matmul_ref(w[b + "ssm_in.weight"], h)
            z, dt = zxbcdt[:, :di], zxbcdt[:, di + cd:]
            xbc, state["conv"][layer] = ssm.ssm_conv_ref(zxbcdt[:, di:di + cd], state["conv"][layer],
                                                         w[b + "ssm_conv1d.weight"], w[b + "ssm_conv1d.bias"],
                                                         silu=True)
            y, state["scan"][layer] = ssm.ssm_scan_heads_ref(
                xbc[:, :di], dt, w[b + "ssm_a"].reshape(-1), xbc[:, di:di + GN], xbc[:, di + GN:],
                w[b + "ssm_d"].reshape(-1), state["scan"][layer], w[b + "ssm_dt.bias"], p.n_groups)
            yn = norm.gated_group_norm_ref(y, z, w[b + "ssm_norm.weight"], p.n_groups, p.eps)
            x = x + mm.matmul_ref(w[b + "ssm_out.weight"], yn)
            if collect is not None:
                collect.append(x.copy())
        return mm.matmul_ref(self.output, norm.rms_norm_ref(x, w["output_norm.weight"], p.eps))
