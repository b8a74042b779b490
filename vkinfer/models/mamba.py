"""Mamba-1 (general.architecture = "mamba"): the GPU graph, the per-slot state layout, and
a numpy executor built from the ops' numpy twins (the reference for per-layer comparisons).
Math: spec mamba.md."""
from dataclasses import dataclass

import numpy as np

from ..gguf import GGUFError, OptionalShape, param
from ..gpu import Graph, Tensor
from ..gpu.tensor import BLOCK_TYPES
from ..gpu.weights import as_weight
from ..ops import copy as copy_ops
from ..ops import elementwise as ew
from ..ops import get_rows as gr
from ..ops import matmul as mm
from ..ops import norm, ssm


@dataclass
class MambaParams:
    n_embd: int = param("embedding_length")
    n_layer: int = param("block_count")
    d_conv: int = param("ssm.conv_kernel", lo=2)          # the conv state keeps d_conv - 1 columns
    d_inner: int = param("ssm.inner_size")
    d_state: int = param("ssm.state_size")
    dt_rank: int = param("ssm.time_step_rank")
    eps: float = param("attention.layer_norm_rms_epsilon", 1e-5)
    # Falcon-Mamba's norms of dt, B and C: transformers' mixer_rms_eps (1e-6); GGUF has no key for
    # it (llama.cpp uses the layer-norm eps there), so this one is vkinfer's, read when present.
    dt_b_c_eps: float = param("ssm.dt_b_c_rms_epsilon", 1e-6, standard=False)
    dt_b_c_rms: bool = param("ssm.dt_b_c_rms", False)
    n_ctx_train: int = param("context_length", 1 << 20)

    @property
    def n_layers(self) -> int:
        return self.n_layer


def mamba_tensors(p: MambaParams, n_vocab: int) -> dict:
    """name -> numpy shape (OptionalShape: the tensor may be absent; a tied output head)."""
    d, di = p.n_embd, p.d_inner
    want = {"token_embd.weight": (n_vocab, d), "output_norm.weight": (d,),
            "output.weight": OptionalShape((n_vocab, d))}
    for i in range(p.n_layer):
        b = f"blk.{i}."
        want.update({
            b + "attn_norm.weight": (d,), b + "ssm_in.weight": (2 * di, d),
            b + "ssm_conv1d.weight": (di, p.d_conv), b + "ssm_conv1d.bias": (di,),
            b + "ssm_x.weight": (p.dt_rank + 2 * p.d_state, di),
            b + "ssm_dt.weight": (di, p.dt_rank), b + "ssm_dt.bias": (di,),
            b + "ssm_a": (di, p.d_state), b + "ssm_d": (di,), b + "ssm_out.weight": (d, di)})
    return want


class Mamba:
    """Records batched steps over the engine's slotted state pool."""
    OPTIONS = {}              # option -> allowed values (vkinfer.load(..., **options))
    Params = MambaParams
    expected_tensors = staticmethod(mamba_tensors)

    @staticmethod
    def check_file(f):
        """What the tensor list cannot say: d_inner agrees with ssm_in."""
        ssm_in = f.tensors.get("blk.0.ssm_in.weight")
        if ssm_in is not None and ssm_in.shape[0] != 2 * f.params.d_inner:
            raise GGUFError(f"{f.path.name}: mamba.ssm.inner_size = {f.params.d_inner} but "
                            f"blk.0.ssm_in.weight has {ssm_in.shape[0]} rows (expected 2 x inner_size)")

    @staticmethod
    def slot_state_bytes(f, n_ctx: int, **options) -> tuple:
        """(recurrent state bytes, KV-cache bytes) of one slot at context n_ctx."""
        p = f.params
        return 4 * p.n_layer * p.d_inner * (p.d_conv - 1 + p.d_state), 0

    def __init__(self, dev, f, weights: dict, n_ctx: int, max_rows: int):
        self.dev, self.p, self.w = dev, f.params, weights
        self.n_taps = f.params.n_layer
        self.n_vocab = f.n_vocab
        self.output = weights.get("output.weight", weights["token_embd.weight"])
        self.output_norm = weights["output_norm.weight"]
        p = self.p
        self.dbc_width = p.dt_rank + 2 * p.d_state
        # Scratch for up to max_rows token rows, shared by every layer and every graph.
        shapes = {"x": p.n_embd, "xz": 2 * p.d_inner, "x1": p.d_inner,
                  "dbc": self.dbc_width, "dt_in": p.dt_rank, "dt": p.d_inner, "y": p.d_inner,
                  "bc": 2 * p.d_state}
        self.scratch = {k: dev.empty((max_rows, n), "f32", name=k) for k, n in shapes.items()}

    def state_fields(self) -> dict:
        from ..engine import StateField
        p = self.p
        return {"conv": StateField(p.n_layer, (p.d_inner, p.d_conv - 1)),
                "scan": StateField(p.n_layer, (p.d_inner, p.d_state))}

    def build(self, g: Graph, state, inputs: dict, taps: Tensor | None = None) -> Tensor:
        """Record one step: inputs["ids"] u32 [rows] of inputs["n_seq"] sequences -> the residual
        [rows, n_embd]. With `taps` [n_layer, rows, n_embd], the residual after each layer is
        copied there (debugging)."""
        p, w = self.p, self.w
        ids, slots, B = inputs["ids"], inputs["slots"], inputs["n_seq"]
        T = ids.shape[0]
        s = {k: t.slice(0, 0, T) for k, t in self.scratch.items()}
        g.block = "embed"
        x = gr.get_rows(g, w["token_embd.weight"], ids, out=s["x"])
        di, dtr, ds = p.d_inner, p.dt_rank, p.d_state
        for layer in range(p.n_layer):
            g.block = f"layer {layer}"
            b = f"blk.{layer}."
            xz = mm.matmul(g, w[b + "ssm_in.weight"], x, out=s["xz"], norm=w[b + "attn_norm.weight"],
                           eps=p.eps)
            for lo, part in state.parts("conv", layer):
                x1 = ssm.ssm_conv(g, xz.slice(1, 0, di), part, w[b + "ssm_conv1d.weight"],
                                  w[b + "ssm_conv1d.bias"], out=s["x1"], silu=True, slots=slots,
                                  n_seq=B, slot_lo=lo)
            dbc = mm.matmul(g, w[b + "ssm_x.weight"], x1, out=s["dbc"])
            # The dt projection inside the scan for one token per sequence, where its weight is
            # one part of whole blocks. In a prompt each channel would read its W_dt row again
            # for every token, serially: on llvmpipe the scan took 2.3x the separate matmul and
            # scan together (bench/RESULTS.md).
            w_dt = as_weight(w[b + "ssm_dt.weight"])
            fused = T == B and len(w_dt.parts) == 1 and (w_dt.dtype not in BLOCK_TYPES
                                                         or dtr % BLOCK_TYPES[w_dt.dtype][0] == 0)
            dt_in = dbc.slice(1, 0, dtr)       # one token: a contiguous view; more: copied if needed
            if not dt_in.contiguous and (p.dt_b_c_rms or not fused):
                dt_in = copy_ops.copy(g, dt_in, out=s["dt_in"])
            B_, C_ = dbc.slice(1, dtr, dtr + ds), dbc.slice(1, dtr + ds, dtr + 2 * ds)
            if p.dt_b_c_rms:
                norm.rms_norm(g, dt_in, None, p.dt_b_c_eps, out=dt_in)
                bc = copy_ops.copy(g, dbc.slice(1, dtr, dtr + 2 * ds), out=s["bc"])
                B_, C_ = bc.slice(1, 0, ds), bc.slice(1, ds, 2 * ds)
                norm.rms_norm(g, bc.reshape(T * 2, ds), None, p.dt_b_c_eps, out=bc.reshape(T * 2, ds))
            dt = dt_in if fused else mm.matmul(g, w_dt, dt_in, out=s["dt"])
            for lo, part in state.parts("scan", layer):
                y = ssm.ssm_scan(g, x1, dt, w[b + "ssm_a"], B_, C_, w[b + "ssm_d"], part,
                                 out=s["y"], z=xz.slice(1, di, 2 * di), dt_bias=w[b + "ssm_dt.bias"],
                                 slots=slots, n_seq=B, slot_lo=lo, dt_proj=w_dt if fused else None)
            mm.matmul(g, w[b + "ssm_out.weight"], y, out=x, accumulate=True)   # the residual add
            if taps is not None:
                copy_ops.copy(g, x, out=taps[layer])
        return x


# ---- numpy executor ------------------------------------------------------------------------------
class MambaNumpy:
    """The same model on the CPU with the ops' numpy twins; state carried like the GPU's."""

    def __init__(self, f):
        self.p = f.params
        self.w = {name: t.dequantize() for name, t in f.tensors.items()}
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])

    def new_state(self) -> dict:
        p = self.p
        return {"conv": np.zeros((p.n_layer, self.conv_channels, p.d_conv - 1), np.float32),
                "scan": np.zeros((p.n_layer, p.d_inner, p.d_state), np.float32)}

    @property
    def conv_channels(self) -> int:
        return self.p.d_inner

    def forward(self, state: dict, ids, collect: list | None = None) -> np.ndarray:
        """Logits [T, n_vocab] for a chunk; `collect` gets the residual after each layer."""
        p, w = self.p, self.w
        di, dtr, ds = p.d_inner, p.dt_rank, p.d_state
        x = gr.get_rows_ref(w["token_embd.weight"], np.asarray(ids))
        for layer in range(p.n_layer):
            b = f"blk.{layer}."
            h = norm.rms_norm_ref(x, w[b + "attn_norm.weight"], p.eps)
            xz = mm.matmul_ref(w[b + "ssm_in.weight"], h)
            x1, state["conv"][layer] = ssm.ssm_conv_ref(xz[:, :di], state["conv"][layer],
                                                        w[b + "ssm_conv1d.weight"],
                                                        w[b + "ssm_conv1d.bias"], silu=True)
            dbc = mm.matmul_ref(w[b + "ssm_x.weight"], x1)
            dt_in, B, C = dbc[:, :dtr], dbc[:, dtr:dtr + ds], dbc[:, dtr + ds:]
            if p.dt_b_c_rms:
                dt_in, B, C = (norm.rms_norm_ref(a, None, p.dt_b_c_eps) for a in (dt_in, B, C))
            dt = ew.softplus_ref(mm.matmul_ref(w[b + "ssm_dt.weight"], dt_in) + w[b + "ssm_dt.bias"])
            y, state["scan"][layer] = ssm.ssm_scan_ref(x1, dt, w[b + "ssm_a"], B, C, w[b + "ssm_d"],
                                                       state["scan"][layer], z=xz[:, di:])
            x = x + mm.matmul_ref(w[b + "ssm_out.weight"], y)
            if collect is not None:
                collect.append(x.copy())
        return mm.matmul_ref(self.output, norm.rms_norm_ref(x, w["output_norm.weight"], p.eps))
