"""Embedding lookup: rows of an F32, F16 or BF16 matrix picked by token ids read on the GPU,
widened to F32."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor
from ..gpu.weights import check_weight

WG = 256


def get_rows(g: Graph, W, ids: Tensor, out: Tensor | None = None) -> Tensor:
    """out[n] = W[ids[n]] for W [rows, in] (a Weight or a Tensor) and ids u32 [N] (it may
    live in a host buffer); out f32 [N, in]. An id >= rows gives a row of zeros."""
    W = check_weight("get_rows", W, 2)
    n_rows, n_in = W.shape
    check_tensor("get_rows", "ids", ids, dtype="u32", shape=(None,))
    n = ids.shape[0]
    if out is None:
        out = g.dev.empty((n, n_in), "f32")
    else:
        check_tensor("get_rows", "out", out, dtype="f32", shape=(n, n_in))
    for start, part in W.parts:
        push = [part.offset, part.shape[0], start, n_rows, n_in, ids.offset, n, out.offset]
        g.dispatch(f"get_rows.{W.dtype}", [part, ids], [out], push, groups=ceil(n * ceil(n_in / 4) / WG))
    return out


def get_rows_ref(W: np.ndarray, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    out = np.zeros((len(ids), W.shape[1]), np.float32)
    inside = ids < W.shape[0]
    out[inside] = W[ids[inside]]
    return out
