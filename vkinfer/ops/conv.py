"""1-D convolution over time on contiguous token-major F32 activations x [T_in, C_in] with
valid padding (T_out = T_in - K + 1): im2col1d (for a conv as a matmul) and a direct grouped
conv1d in PyTorch's weight layout. Both stay in F32 throughout (ZAYA's grouped conv is the
op that lost accuracy through an F16 im2col elsewhere)."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, grid, output, require

WG = 64
TOKENS_PER_INVOCATION = 8    # grouped conv: outputs per invocation along time (3.7x on lavapipe)
MAX_K = 32                   # the grouped conv unrolls its loops over the kernel taps
MAX_INDEX = 2**32 - 1    # shaders index elements with 32-bit uints



def _input(op: str, x: Tensor, K: int) -> tuple:
    check_tensor(op, "x", x, dtype="f32")
    require(x.ndim == 2, f"{op}: x must be [T_in, C_in], got {x.shape}")
    require(K >= 1 and x.shape[0] >= K,
            f"{op}: {x.shape[0]} input tokens are fewer than the kernel size {K}")
    return x.shape[0] - K + 1, x.shape[1]


def im2col1d(g: Graph, x: Tensor, K: int, out: Tensor | None = None) -> Tensor:
    """x [T_in, C] -> cols [T_in-K+1, C*K], cols[t, c*K + k] = x[t + k, c]."""
    op = "im2col1d"
    T_out, C = _input(op, x, K)
    n = T_out * C * K
    require(n <= MAX_INDEX, f"{op}: {n} outputs exceed 32-bit indexing; split by rows")
    out = output(g, op, out, (T_out, C * K))
    g.dispatch("conv1d.im2col", [x], [out], [n, C, K, x.offset, out.offset], ceil(n / WG))
    return out


def conv1d_grouped(g: Graph, x: Tensor, w: Tensor, b: Tensor | None, groups: int,
                   out: Tensor | None = None, n_seq: int = 1) -> Tensor:
    """x [T_in, C_in], w [C_out, C_in/groups, K], b [C_out] or None -> out [T_in-K+1, C_out],
    out[t, o] = b[o] + sum_{i in group(o), k} w[o, i - first(group(o)), k] * x[t + k, i].
    With n_seq > 1, x holds n_seq sequences of T_in rows one after the other, each convolved
    on its own: out [n_seq * (T_in-K+1), C_out]."""
    op = "conv1d_grouped"
    check_tensor(op, "w", w, dtype="f32")
    require(w.ndim == 3, f"{op}: w must be [C_out, C_in/groups, K], got {w.shape}")
    C_out, cg_in, K = w.shape
    require(K <= MAX_K, f"{op}: kernel size {K} is over the supported {MAX_K}")
    require(n_seq >= 1 and x.ndim == 2 and x.shape[0] % n_seq == 0,
            f"{op}: x {x.shape} does not hold {n_seq} sequences of equal length")
    T_out, C_in = _input(op, x.slice(0, 0, x.shape[0] // n_seq), K)
    require(groups >= 1 and C_in % groups == 0 and C_out % groups == 0,
            f"{op}: {groups} groups do not divide C_in={C_in} and C_out={C_out}")
    require(cg_in == C_in // groups,
            f"{op}: w has {cg_in} input channels per group, x gives {C_in // groups}")
    if b is not None:
        check_tensor(op, "b", b, dtype="f32", shape=(C_out,))
    n = T_out * C_out
    require(n <= MAX_INDEX, f"{op}: {n} outputs exceed 32-bit indexing; split by rows")
    out = output(g, op, out, (n_seq * T_out, C_out))
    ins = [x, w] + ([b] if b is not None else [])
    tokens = TOKENS_PER_INVOCATION if T_out > 1 else 1     # decode: no wasted unrolled work
    n_invocations = ceil(T_out / tokens) * C_out
    gx, gy, _ = grid(ceil(n_invocations / WG))
    g.dispatch("conv1d.grouped_bias" if b is not None else "conv1d.grouped_nobias", ins, [out],
               [T_out, C_in, C_out, cg_in, C_out // groups, x.offset, w.offset,
                b.offset if b is not None else 0, out.offset], (gx, gy, n_seq),
               spec=(K, tokens))
    return out


# ---- numpy twins ------------------------------------------------------------------------------
def im2col1d_ref(x, K):
    T_out = x.shape[0] - K + 1
    return np.stack([x[k:k + T_out] for k in range(K)], axis=2).reshape(T_out, -1)


def conv1d_grouped_ref(x, w, b, groups):
    C_out, cg_in, K = w.shape
    cols = im2col1d_ref(np.asarray(x, np.float64), K)              # [T_out, C_in*K], (i, k) order
    cols = cols.reshape(cols.shape[0], groups, cg_in * K)
    w_g = np.asarray(w, np.float64).reshape(groups, C_out // groups, cg_in * K)
    out = np.einsum("tgj,goj->tgo", cols, w_g).reshape(cols.shape[0], C_out)
    if b is not None:
        out += b
    return out.astype(np.float32)
