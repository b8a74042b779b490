"""RMS norm over the last axis of a contiguous F32 tensor, with an optional per-channel weight;
Mamba-2's gated group norm; ZAYA's residual merge fused with the norm after it."""
import numpy as np

from ..gpu import Graph, Tensor, check_tensor, output, require


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
               [rows, cols, x.offset, w_off, out.offset, float(eps), 1, 0, 0], groups=rows)
    return out


def gated_group_norm(g: Graph, y: Tensor, z: Tensor, w: Tensor, n_groups: int, eps: float = 1e-5,
                     out: Tensor | None = None) -> Tensor:
    """Mamba-2's gated norm: v = y * silu(z), then an RMS norm over each of n_groups groups of
    columns, times w [G, cols / G] (group g's row for its columns). y [T, C] contiguous, z
    [T, C] with contiguous rows (a column slice is fine) -> out [T, C]."""
    op = "gated_group_norm"
    check_tensor(op, "y", y, dtype="f32")
    require(y.ndim == 2 and y.numel > 0, f"{op}: y has shape {y.shape}, expected [T, C]")
    T, cols = y.shape
    require(n_groups >= 1 and cols % n_groups == 0, f"{op}: {n_groups} groups do not divide {cols} columns")
    check_tensor(op, "z", z, dtype="f32", shape=(T, cols), contiguous=False)
    require(cols == 1 or z.strides[1] == 1, f"{op}: z {z} is not contiguous along its rows")
    group = cols // n_groups
    check_tensor(op, "w", w, dtype="f32")
    require(w.numel == cols, f"{op}: w has shape {w.shape}, expected [{n_groups}, {group}]")
    out = output(g, op, out, (T, cols))
    rows = T * n_groups
    g.dispatch("rms_norm.gated", [y, w, z], [out],
               [rows, group, y.offset, w.offset, out.offset, float(eps), n_groups, z.offset,
                z.strides[0] if T > 1 else cols], groups=rows)
    return out


def gated_group_norm_ref(y, z, w, n_groups: int, eps: float = 1e-5) -> np.ndarray:
    v = y.astype(np.float64) * z / (1.0 + np.exp(-z.astype(np.float64)))
    T, cols = v.shape
    v = v.reshape(T, n_groups, cols // n_groups)
    v = v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps)
    return (v * np.asarray(w, np.float64).reshape(n_groups, -1)).reshape(T, cols).astype(np.float32)


def rms_norm_ref(x: np.ndarray, w: np.ndarray | None = None, eps: float = 1e-5) -> np.ndarray:
    x64 = x.astype(np.float64)
    y = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    if w is not None:
        y = y * w
    return y.astype(np.float32)


def merge_norm(g: Graph, h: Tensor, res: Tensor, hs: tuple, rs: tuple | None, w: Tensor,
               eps: float = 1e-5, x: Tensor | None = None, probs: Tensor | None = None,
               expert_ids: Tensor | None = None) -> Tensor:
    """ZAYA's delayed residual merge then the input norm (zaya1.md §3.1), one work group per
    row: res = (res + rs_b) * rs_w + (h + hs_b) * hs_w in place (rs=None, the first block:
    res = (h + hs_b) * hs_w), x = rms_norm(res) * w; returns x. hs and rs are (bias, weight)
    pairs [C]. With probs f32 [T, E + 1] and expert_ids u32 [T], h (a top-1 MoE output) is
    first weighted by probs[t, expert_ids[t]], and by 0 for the skip slot (id >= E)."""
    op = "merge_norm"
    check_tensor(op, "h", h, dtype="f32")
    require(h.ndim == 2 and h.numel > 0, f"{op}: h has shape {h.shape}, expected [T, C]")
    T, C = h.shape
    check_tensor(op, "res", res, dtype="f32", shape=(T, C))
    require(res.buf is not h.buf, f"{op}: res must not share h's buffer")
    vecs = [*hs, w, *(rs or ())]
    for t in vecs:
        check_tensor(op, "weight", t, dtype="f32", shape=(C,))
    x = output(g, op, x, (T, C))
    ins = [h, *vecs]
    variant = "first" if rs is None else "merge"
    p_off = id_off = skip = 0
    if probs is not None:
        require(rs is not None, f"{op}: the first block has no MoE output to combine")
        check_tensor(op, "probs", probs, dtype="f32", shape=(T, None))
        check_tensor(op, "expert_ids", expert_ids, dtype="u32", shape=(T,))
        ins += [probs, expert_ids]
        variant, p_off, id_off, skip = "combine", probs.offset, expert_ids.offset, probs.shape[1] - 1
    r_offs = (rs[0].offset, rs[1].offset) if rs is not None else (0, 0)
    g.dispatch(f"merge_norm.{variant}", ins, [res, x],
               [T, C, float(eps), h.offset, hs[0].offset, hs[1].offset, w.offset, *r_offs,
                p_off, id_off, res.offset, x.offset, skip], groups=T)
    return x


def merge_norm_ref(h, res, hs: tuple, rs: tuple | None, w, eps: float = 1e-5, probs=None,
                   expert_ids=None) -> tuple:
    """(res, x) after merge_norm."""
    h = np.asarray(h, np.float64)
    if probs is not None:
        E = probs.shape[1] - 1
        slots = np.minimum(np.asarray(expert_ids, np.int64), E)
        prob = np.where(slots < E, probs[np.arange(len(slots)), slots], 0.0)[:, None]
        h = np.where(prob == 0.0, 0.0, h * prob)
    r = (h + hs[0]) * hs[1]
    if rs is not None:
        r = r + (np.asarray(res, np.float64) + rs[0]) * rs[1]
    r = r.astype(np.float32)
    return r, rms_norm_ref(r, w, eps)
