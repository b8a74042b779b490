"""Top-1 MoE output (zaya1.md §3.3 steps 7-8): the chosen expert's output scaled by its router
probability, with the skip slot's behaviour, all read on the GPU (no host round trip for the
expert choice)."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require

WG = 256
SKIP_OUTPUTS = ("zero", "identity")


def moe_combine(g: Graph, h: Tensor, probs: Tensor, expert_ids: Tensor, skip: str = "zero",
                x: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """out[t] = h[t] * probs[t, e_t] for e_t = expert_ids[t] < E, where probs is f32 [T, E + 1]
    and slot E is the skip slot. A token with e_t >= E gets 0 (skip="zero") or
    x[t] * probs[t, E] (skip="identity", x [T, n] the MoE input). out may be h."""
    op = "moe_combine"
    require(skip in SKIP_OUTPUTS, f"{op}: skip={skip!r} is not one of {', '.join(SKIP_OUTPUTS)}")
    check_tensor(op, "h", h, dtype="f32")
    require(h.ndim == 2 and h.shape[0] >= 1, f"{op}: h has shape {h.shape}, expected [T, n]")
    T, n = h.shape
    check_tensor(op, "probs", probs, dtype="f32", shape=(T, None))
    require(probs.shape[1] >= 2, f"{op}: probs has {probs.shape[1]} slots; expected experts + skip")
    check_tensor(op, "expert_ids", expert_ids, dtype="u32", shape=(T,))
    ins = [h, probs, expert_ids]
    if skip == "identity":
        require(x is not None, f"{op}: skip='identity' needs the MoE input x")
        check_tensor(op, "x", x, dtype="f32", shape=(T, n))
        ins.append(x)
    else:
        require(x is None, f"{op}: x is only used with skip='identity'")
    if out is None:
        out = g.dev.empty((T, n), "f32")
    else:
        check_tensor(op, "out", out, dtype="f32", shape=(T, n))
    g.dispatch(f"moe.{skip}", ins, [out],
               [T * n, n, probs.shape[1] - 1, h.offset, probs.offset, expert_ids.offset,
                x.offset if x is not None else 0, out.offset], groups=ceil(T * n / WG))
    return out


def moe_combine_ref(h, probs, expert_ids, skip="zero", x=None):
    E = probs.shape[1] - 1
    slots = np.minimum(np.asarray(expert_ids, np.int64), E)
    prob = probs[np.arange(len(slots)), slots][:, None]
    out = h * prob
    skipped = slots == E
    out[skipped] = x[skipped] * prob[skipped] if skip == "identity" else 0.0
    return out.astype(np.float32)
