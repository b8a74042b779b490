"""Row softmax in F32 (max-subtracted, one work group per row)."""
import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require


def softmax(g: Graph, x: Tensor, out: Tensor | None = None) -> Tensor:
    """softmax over the last axis of a contiguous F32 tensor (rows of x [R, C]). out may be x."""
    check_tensor("softmax", "x", x, dtype="f32")
    require(x.ndim >= 1 and x.numel > 0, f"softmax: x has shape {x.shape}, expected [R, C]")
    cols = x.shape[-1]
    rows = x.numel // cols
    if out is None:
        out = g.dev.empty(x.shape, "f32")
    else:
        check_tensor("softmax", "out", out, dtype="f32", shape=x.shape)
    g.dispatch("softmax", [x], [out], [rows, cols, x.offset, out.offset], groups=rows)
    return out


def softmax_ref(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
