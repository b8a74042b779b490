"""ZAYA1 CCA between the projections and the KV cache (zaya1.md §3.2 steps 2-7): cca_qkv runs
the convs with their state, the q/k "means", the head norms, RoPE and the delayed values in one
dispatch. qk_mean_ref is the means' twin: the raw projections c = q||k of a token feed both the
causal convolution and these means, which are added to the convolution's output y."""
from math import ceil, sqrt

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, output, require
from . import slot_push, slotted_state


def qk_mean_ref(c, y, n_head: int, n_head_kv: int, head_dim: int) -> tuple:
    T, per_kv = c.shape[0], n_head // n_head_kv
    qc = c[:, :n_head * head_dim].astype(np.float64).reshape(T, n_head, head_dim)
    kc = c[:, n_head * head_dim:].astype(np.float64).reshape(T, n_head_kv, head_dim)
    mean_q = 0.5 * (qc + np.repeat(kc, per_kv, axis=1))
    mean_k = 0.5 * (qc.reshape(T, n_head_kv, per_kv, head_dim).mean(axis=2) + kc)
    q = y[:, :n_head * head_dim].reshape(T, n_head, head_dim) + mean_q
    k = y[:, n_head * head_dim:].reshape(T, n_head_kv, head_dim) + mean_k
    return q.astype(np.float32), k.astype(np.float32)


# ---- the fused CCA: convs, means, head norms, RoPE and the values in one dispatch ----------------
MAX_HEAD_DIM, MAX_GROUPED_TAPS, MAX_DIM_TAPS = 256, 4, 512   # shaders/cca_qkv.comp's shared arrays
TOKENS_PER_GROUP = 4                          # cca_qkv's TB: the state reads must fit in one block


def repack_grouped(w_grp: np.ndarray, groups: int) -> np.ndarray:
    """The grouped conv weight [C, C / groups, K] (PyTorch's layout) as cca_qkv reads it:
    [groups, C / groups * K, C / groups], element [g, i * K + k, o] = w_grp[g * C/groups + o, i, k]."""
    C, cg, K = w_grp.shape
    return np.ascontiguousarray(np.asarray(w_grp, np.float32).reshape(groups, C // groups, cg * K)
                                .transpose(0, 2, 1))


def cca_qkv(g: Graph, c: Tensor, cstate: Tensor, vstate: Tensor, w_dw: Tensor, b_dw: Tensor | None,
            w_grp: Tensor, b_grp: Tensor, k_scale: Tensor, positions: Tensor, n_head: int,
            n_head_kv: int, n_rot: int, theta: float, v1_width: int, q_out: Tensor | None = None,
            k_out: Tensor | None = None, v_out: Tensor | None = None, slots: Tensor | None = None,
            n_seq: int = 1, slot_lo: int = 0) -> tuple:
    """zaya1.md §3.2 steps 2-7 from one stacked projection c f32 [rows, n_qk + v1 + v2] (q||k,
    this token's values v1, and W2 x, val_proj2 of this token's input) of n_seq sequences:
    the depthwise conv with the carried state cstate [C = n_qk, S] (w_dw [C, K1], b_dw [C] or
    None), the grouped conv (w_grp [H + Hkv, head_dim * K2, head_dim] as repack_grouped makes
    it, b_grp [C]; S = K1 - 1 + K2 - 1), plus
    the q/k means (qk_mean), the head norms (sqrt(head_dim), k_scale [Hkv] on k), RoPE at
    `positions` -> q [rows, H, dh] and k [rows, Hkv, dh]; v [rows, v1 + v2] = [v1 | the
    previous token's W2 x], the first row's from vstate [v2, 1], which keeps the last W2 x.
    States: one sequence's, or pool parts [n_part_slots, ...] with slots u32 [rows]."""
    op = "cca_qkv"
    H, Hkv = n_head, n_head_kv
    check_tensor(op, "w_grp", w_grp, dtype="f32")
    require(w_grp.ndim == 3 and w_grp.shape[0] == H + Hkv and w_grp.shape[1] % w_grp.shape[2] == 0,
            f"{op}: w_grp {w_grp.shape} is not [{H} + {Hkv} heads, head_dim * K2, head_dim] (repack_grouped)")
    dh = w_grp.shape[2]
    C, K2 = (H + Hkv) * dh, w_grp.shape[1] // dh
    require(H >= 1 and Hkv >= 1 and H % Hkv == 0, f"{op}: {H} query heads are not a multiple of {Hkv} kv heads")
    require(dh <= MAX_HEAD_DIM and 1 <= K2 <= MAX_GROUPED_TAPS and dh * K2 <= MAX_DIM_TAPS,
            f"{op}: head_dim {dh} over {MAX_HEAD_DIM}, grouped taps {K2} over {MAX_GROUPED_TAPS}, or "
            f"head_dim x taps {dh * K2} over {MAX_DIM_TAPS}")
    require(n_rot > 0 and n_rot % 2 == 0 and n_rot <= dh, f"{op}: n_rot={n_rot} must be even, within 1..{dh}")
    check_tensor(op, "w_dw", w_dw, dtype="f32")
    require(w_dw.ndim == 2 and w_dw.shape[0] == C, f"{op}: w_dw must be [{C}, K1], got {w_dw.shape}")
    K1 = w_dw.shape[1]
    S = K1 - 1 + K2 - 1
    require(K1 >= 1 and S <= TOKENS_PER_GROUP,
            f"{op}: {K1} depthwise and {K2} grouped taps need {S} state columns, more than {TOKENS_PER_GROUP}")
    check_tensor(op, "c", c, dtype="f32")
    require(c.ndim == 2 and c.shape[1] > C + v1_width >= C, f"{op}: c {c.shape} has no q||k, v1, W2 x columns")
    n_c = c.shape[1]
    v2_width = n_c - C - v1_width
    rows = c.shape[0]
    require(n_seq >= 1 and rows % n_seq == 0, f"{op}: {rows} rows are not {n_seq} sequences of equal length")
    T = rows // n_seq
    require(n_seq <= 65535 and T <= 65535 * TOKENS_PER_GROUP,
            f"{op}: {n_seq} sequences of {T} rows is over the grid's 65535 groups a side")
    cpart, vpart = slotted_state(op, "cstate", cstate, 2), slotted_state(op, "vstate", vstate, 2)
    require(cpart.dtype == "f32" and cpart.shape[1:] == (C, S),
            f"{op}: cstate must be [{C}, {S}] per slot, got {cstate.shape}")
    require(vpart.dtype == "f32" and vpart.shape[1:] == (v2_width, 1) and vpart.shape[0] == cpart.shape[0],
            f"{op}: vstate must be [{v2_width}, 1] per slot, as many as cstate's, got {vstate.shape}")
    for name, t, n in (("b_grp", b_grp, C), ("k_scale", k_scale, Hkv), ("b_dw", b_dw, C)):
        if t is not None:
            check_tensor(op, name, t, dtype="f32", shape=(n,))
    check_tensor(op, "positions", positions, dtype="u32", shape=(rows,))
    q = output(g, op, q_out, (rows, H, dh))
    k = output(g, op, k_out, (rows, Hkv, dh))
    v = output(g, op, v_out, (rows, v1_width + v2_width))
    from .attention import _turns_table
    table = _turns_table(g.dev, n_rot, theta)
    slot_t, slot_words = slot_push(g, op, slots, rows, T, cpart, slot_lo)
    b_t = b_dw if b_dw is not None else b_grp            # unread without a depthwise bias
    kernel = "cca_qkv.lane" if g.dev.lane_kernels else "cca_qkv.plain"
    g.dispatch(kernel, [c, w_dw, b_t, w_grp, b_grp, k_scale, positions, table, slot_t],
               [cpart, vpart, q, k, v],
               [T, H, Hkv, dh, K1, K2, n_c, v1_width, v2_width, n_rot // 2, int(b_dw is not None),
                float(sqrt(dh)), c.offset, w_dw.offset, b_t.offset, w_grp.offset, b_grp.offset,
                k_scale.offset, positions.offset, table.offset, *slot_words,
                cpart.offset, vpart.offset, q.offset, k.offset, v.offset],
               groups=(H + Hkv + 1, n_seq, ceil(T / TOKENS_PER_GROUP)))
    return q, k, v


def cca_qkv_ref(c, cstate, vstate, w_dw, b_dw, w_grp, b_grp, k_scale, positions, n_head: int,
                n_head_kv: int, n_rot: int, theta: float, v1_width: int) -> tuple:
    """One sequence: (q, k, v, new cstate, new vstate), from the unfused ops' twins."""
    from .attention import head_norm_ref, rope_neox_ref
    from .conv import conv1d_grouped_ref
    from .ssm import ssm_conv_ref
    C, dh, _ = w_grp.shape
    H, Hkv = n_head, n_head_kv
    qk = c[:, :C]
    d, cstate = ssm_conv_ref(qk, cstate, w_dw, b_dw)
    y = conv1d_grouped_ref(d, w_grp, b_grp, groups=H + Hkv)
    q, k = qk_mean_ref(qk, y, H, Hkv, dh)
    q = rope_neox_ref(head_norm_ref(q, sqrt(dh)), positions, n_rot, theta)
    k = rope_neox_ref(head_norm_ref(k, sqrt(dh), k_scale), positions, n_rot, theta)
    w2x = c[:, C + v1_width:]
    prev = np.concatenate([vstate.reshape(1, -1), w2x[:-1]])
    v = np.concatenate([c[:, C:C + v1_width], prev], axis=1)
    return q, k, v.astype(np.float32), cstate, w2x[-1:].T.copy()
