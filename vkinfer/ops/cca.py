"""ZAYA1 CCA: the q/k "means" (zaya1.md §3.2 steps 2 and 4). The raw projections c = q||k of a
token feed both the causal convolution and these means; this op adds the means to the
convolution's output y and splits the stream into contiguous q [T, H, dh] and k [T, Hkv, dh]."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require

WG = 256


def qk_mean(g: Graph, c: Tensor, y: Tensor, n_head: int, n_head_kv: int, head_dim: int,
            q_out: Tensor | None = None, k_out: Tensor | None = None) -> tuple:
    """c (raw q||k) and y (their convolution), both f32 [T, (H + Hkv) * dh] -> (q, k) with
    q[t, h] = y_q[t, h] + (c_q[t, h] + c_k[t, h // (H/Hkv)]) / 2 and
    k[t, j] = y_k[t, j] + (mean of c_q over j's query heads + c_k[t, j]) / 2."""
    op = "qk_mean"
    require(n_head >= 1 and n_head_kv >= 1 and head_dim >= 1 and n_head % n_head_kv == 0,
            f"{op}: {n_head} query heads are not a multiple of {n_head_kv} kv heads")
    n_qk = (n_head + n_head_kv) * head_dim
    check_tensor(op, "c", c, dtype="f32", shape=(None, n_qk))
    T = c.shape[0]
    require(T >= 1, f"{op}: c has no tokens")
    check_tensor(op, "y", y, dtype="f32", shape=(T, n_qk))
    shapes = {"q_out": (T, n_head, head_dim), "k_out": (T, n_head_kv, head_dim)}
    outs = []
    for name, t in (("q_out", q_out), ("k_out", k_out)):
        if t is None:
            t = g.dev.empty(shapes[name], "f32")
        else:
            check_tensor(op, name, t, dtype="f32", shape=shapes[name])
        outs.append(t)
    q, k = outs
    n = T * n_qk
    g.dispatch("cca.qk_mean", [c, y], [q, k],
               [n, n_qk, n_head * head_dim, head_dim, n_head // n_head_kv,
                c.offset, y.offset, q.offset, k.offset], groups=ceil(n / WG))
    return q, k


def qk_mean_ref(c, y, n_head: int, n_head_kv: int, head_dim: int) -> tuple:
    T, per_kv = c.shape[0], n_head // n_head_kv
    qc = c[:, :n_head * head_dim].astype(np.float64).reshape(T, n_head, head_dim)
    kc = c[:, n_head * head_dim:].astype(np.float64).reshape(T, n_head_kv, head_dim)
    mean_q = 0.5 * (qc + np.repeat(kc, per_kv, axis=1))
    mean_k = 0.5 * (qc.reshape(T, n_head_kv, per_kv, head_dim).mean(axis=2) + kc)
    q = y[:, :n_head * head_dim].reshape(T, n_head, head_dim) + mean_q
    k = y[:, n_head * head_dim:].reshape(T, n_head_kv, head_dim) + mean_k
    return q.astype(np.float32), k.astype(np.float32)
