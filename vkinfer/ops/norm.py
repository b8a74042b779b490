"""RMS norm over the last axis of a contiguous F32 tensor, with an optional per-channel weight."""
import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require


def rms_norm(g: Graph, x: Tensor, w: Tensor | None = None, eps: float = 1e-5,
             out: Tensor | None = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * w over each row (the last axis) of x; one work group per row."""
    check_tensor("rms_norm", "x", x, dtype="f32")
    require(x.ndim >= 1 and x.numel > 0, f"rms_norm: x has shape {x.shape}, expected [..., C]")
    cols = x.shape[-1]
    rows = x.numel // cols
    ins = [x]
    if w is not None:
        check_tensor("rms_norm", "w", w, dtype="f32", shape=(cols,))
        ins.append(w)
    if out is None:
        out = g.dev.empty(x.shape, "f32")
    else:
        check_tensor("rms_norm", "out", out, dtype="f32", shape=x.shape)
    w_off = w.offset if w is not None else 0
    variant = "weight" if w is not None else "plain"
    g.dispatch(f"rms_norm.{variant}", ins, [out],
               [rows, cols, x.offset, w_off, out.offset, float(eps)], groups=rows)
    return out


def rms_norm_ref(x: np.ndarray, w: np.ndarray | None = None, eps: float = 1e-5) -> np.ndarray:
    x64 = x.astype(np.float64)
    y = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    if w is not None:
        y = y * w
    return y.astype(np.float32)
