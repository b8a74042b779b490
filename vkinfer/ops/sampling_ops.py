"""Argmax and top-k over rows of logits, on the GPU, so greedy decoding reads back 4 bytes and
sampling k (id, value) pairs. Both run argmax.comp in two passes: work groups over chunks of
CHUNK columns each keep their top k, then one work group per row merges the candidates.
Order: value descending, ties to the lower index. NaN values are not supported."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require

CHUNK = 4096      # columns per first-pass work group


def _rows_cols(op: str, x: Tensor) -> tuple:
    check_tensor(op, "x", x, dtype="f32")
    require(x.ndim in (1, 2) and x.numel > 0, f"{op}: x has shape {x.shape}, expected [C] or [R, C]")
    return (1, x.shape[0]) if x.ndim == 1 else x.shape


def _select(g: Graph, x: Tensor, rows: int, cols: int, k: int, ids: Tensor, vals: Tensor):
    n_chunks = ceil(cols / CHUNK)
    cand = g.dev.empty((rows, n_chunks, k, 2), "u32")
    g.dispatch("argmax.select", [x], [cand],
               [rows, cols, CHUNK, n_chunks, k, x.offset, 0, 0], groups=rows * n_chunks)
    n = n_chunks * k
    g.dispatch("argmax.merge", [cand], [ids, vals],
               [rows, n, n, 1, k, 0, ids.offset, vals.offset], groups=rows)


def argmax(g: Graph, x: Tensor, out: Tensor | None = None) -> Tensor:
    """Index of the largest value of each row of x [R, C] (the first on ties): u32 [R]."""
    rows, cols = _rows_cols("argmax", x)
    if out is None:
        out = g.dev.empty((rows,), "u32")
    else:
        check_tensor("argmax", "out", out, dtype="u32")
        require(out.numel == rows, f"argmax: out has {out.numel} elements for {rows} rows")
    _select(g, x, rows, cols, 1, out, g.dev.empty((rows,), "f32"))
    return out


def topk(g: Graph, x: Tensor, k: int, out_ids: Tensor | None = None,
         out_vals: Tensor | None = None) -> tuple:
    """The k largest values of x [C] (or of each row of x [R, C]) and their indices, values
    descending, ties by lower index: (ids u32 [k], vals f32 [k]) (or [R, k])."""
    rows, cols = _rows_cols("topk", x)
    require(1 <= k <= cols, f"topk: k={k} must be within 1..{cols} (the row length)")
    shape = (k,) if x.ndim == 1 else (rows, k)
    for name, t, dtype in (("out_ids", out_ids, "u32"), ("out_vals", out_vals, "f32")):
        if t is not None:
            check_tensor("topk", name, t, dtype=dtype, shape=shape)
    out_ids = out_ids if out_ids is not None else g.dev.empty(shape, "u32")
    out_vals = out_vals if out_vals is not None else g.dev.empty(shape, "f32")
    _select(g, x, rows, cols, k, out_ids, out_vals)
    return out_ids, out_vals


# ---- numpy twins -------------------------------------------------------------------------------
def argmax_ref(x: np.ndarray) -> np.ndarray:
    return np.argmax(np.atleast_2d(x), axis=-1).astype(np.uint32)


def topk_ref(x: np.ndarray, k: int) -> tuple:
    """(ids, vals) in the shader's order: a stable sort on -value keeps lower indices first."""
    order = np.argsort(-x.astype(np.float64), axis=-1, kind="stable")[..., :k]
    return order.astype(np.uint32), np.take_along_axis(x, order, axis=-1).astype(np.float32)
