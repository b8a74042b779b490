"""1-D convolution over time on token-major F32 activations x [T_in, C_in] with valid padding
(T_out = T_in - K + 1), as numpy twins: im2col1d_ref and the grouped conv1d in PyTorch's weight
layout. ZAYA's grouped conv runs on the GPU inside ops.cca.cca_qkv, in F32 throughout (the op
that lost accuracy through an F16 im2col elsewhere)."""
import numpy as np


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
