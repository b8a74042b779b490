"""Recurrent ops of Mamba-1 on token-major F32 activations [T, C], with their state updated in
place: ssm_conv (causal depthwise conv over time with carried columns; also ZAYA's depthwise
stage) and ssm_scan (the Mamba-1 selective scan, any d_state).

The token-major inputs may be column slices of a wider activation (rows contiguous, any row
stride: e.g. x and z as the halves of Mamba's xz, or B and C out of dbc); anything else, such
as a transposed view, must go through ops.copy first.

Both run n_seq sequences at once: x holds n_seq * T rows, sequence q's T tokens after the
previous one's, and each sequence reads and writes the state of its slot (slots[q * T]) in a
part of the slot pool [n_part_slots, ...] whose first slot is slot_lo; sequences of other slots
are skipped, so a pool split across buffers takes one dispatch per part."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, grid, output, require
from ..gpu.tensor import BLOCK_TYPES
from ..gpu.weights import as_weight
from . import slot_push, slotted_state
from .elementwise import softplus_ref

WG = 64              # both shaders: one invocation per channel
MAX_D_STATE = 256    # the scan keeps a channel's states in registers


MAX_TAPS = 4          # shaders/ssm_conv.comp: the register window for S = K - 1


def _row_stride(op: str, name: str, t: Tensor, shape: tuple) -> int:
    """Check a [rows, cols] F32 input whose rows are contiguous; return its row stride."""
    check_tensor(op, name, t, dtype="f32", shape=shape, contiguous=False)
    rows, cols = t.shape
    require(cols == 1 or t.strides[1] == 1,
            f"{op}: {name} {t} is not contiguous along its rows; insert ops.copy() first")
    return t.strides[0] if rows > 1 else cols



def _sequences(op: str, x: Tensor, n_seq: int) -> int:
    """Tokens per sequence of x [n_seq * T, ...]."""
    require(x.ndim == 2 and x.shape[0] >= 1, f"{op}: x must be [T >= 1, channels], got {x.shape}")
    require(n_seq >= 1 and x.shape[0] % n_seq == 0,
            f"{op}: {x.shape[0]} rows are not {n_seq} sequences of equal length")
    return x.shape[0] // n_seq


def _groups(n_groups: int, n_seq: int) -> tuple:
    gx, gy, _ = grid(n_groups)
    return (gx, gy, n_seq)


def ssm_conv(g: Graph, x: Tensor, state: Tensor, w: Tensor, b: Tensor | None,
             out: Tensor | None = None, silu: bool = False, slots: Tensor | None = None,
             n_seq: int = 1, slot_lo: int = 0) -> Tensor:
    """x [n_seq * T, C], state [C, S] or a pool part [n_part_slots, C, S] (updated in place),
    w [C, K] (tap 0 = oldest sample), b [C] or None -> out [n_seq * (T+S-K+1), C].
    Mamba: S = K-1 (T outputs, silu=True); ZAYA: K = S = 2."""
    op = "ssm_conv"
    check_tensor(op, "w", w, dtype="f32")
    require(w.ndim == 2 and w.shape[1] >= 1, f"{op}: w must be [C, K], got {w.shape}")
    C, K = w.shape
    part = slotted_state(op, "state", state, 2)
    require(part.dtype == "f32" and part.shape[1] == C and part.shape[2] >= 1,
            f"{op}: state must be [C={C}, S >= 1] per slot, got {state.shape}")
    S = part.shape[2]
    T = _sequences(op, x, n_seq)
    x_rs = _row_stride(op, "x", x, (n_seq * T, C))
    require(T + S >= K, f"{op}: window of {S} state + {T} tokens is shorter than the kernel ({K})")
    if b is not None:
        check_tensor(op, "b", b, dtype="f32", shape=(C,))
    out = output(g, op, out, (n_seq * (T + S - K + 1), C))
    slot_t, slot_words = slot_push(g, op, slots, n_seq * T, T, part, slot_lo)
    variant = ("bias" if b is not None else "nobias") + ("_silu" if silu else "")
    ins = [x, w] + ([b] if b is not None else []) + [slot_t]
    g.dispatch(f"ssm_conv.{variant}", ins, [part, out],
               [T, C, S, K, x.offset, x_rs, w.offset, b.offset if b is not None else 0,
                part.offset, out.offset, *slot_words], _groups(ceil(C / WG), n_seq),
               spec=(K if S == K - 1 and K <= MAX_TAPS else 0,))
    return out


def ssm_scan(g: Graph, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
             state: Tensor, out: Tensor | None = None, z: Tensor | None = None,
             dt_bias: Tensor | None = None, slots: Tensor | None = None, n_seq: int = 1,
             slot_lo: int = 0, dt_proj=None) -> Tensor:
    """Mamba-1 selective scan. x, dt [rows, Dn] (rows = n_seq * T; dt already softplus'ed, or
    with dt_bias [Dn] softplus(dt + dt_bias) is taken here), A [Dn, N] (already -exp(A_log)),
    B, C [rows, N], D [Dn], state [Dn, N] or a pool part [n_part_slots, Dn, N] updated in place
    -> y [rows, Dn]; with z [rows, Dn], y *= silu(z). With dt_proj W_dt [Dn, dt_rank] (a
    Weight of one part, rows of whole blocks; needs z and dt_bias), dt is [rows, dt_rank] and
    the scan takes dt = softplus(W_dt @ dt + dt_bias) itself."""
    op = "ssm_scan"
    check_tensor(op, "A", A, dtype="f32")
    require(A.ndim == 2, f"{op}: A must be [d_inner, d_state], got {A.shape}")
    Dn, N = A.shape
    require(1 <= N <= MAX_D_STATE, f"{op}: d_state {N} is outside 1..{MAX_D_STATE}")
    T = _sequences(op, x, n_seq)
    rows = n_seq * T
    dt_cols, w_words = Dn, [0, 0]
    if dt_proj is not None:
        dt_proj = as_weight(dt_proj)
        dt_cols = dt_proj.shape[1]
        require(len(dt_proj.parts) == 1 and dt_proj.shape[0] == Dn and z is not None and dt_bias is not None,
                f"{op}: dt_proj {dt_proj} must be one part of [{Dn}, dt_rank], with z and dt_bias")
        require(dt_proj.dtype not in BLOCK_TYPES or dt_cols % BLOCK_TYPES[dt_proj.dtype][0] == 0,
                f"{op}: dt_proj rows of {dt_cols} are not whole {dt_proj.dtype} blocks")
        w_words = [dt_cols, dt_proj.parts[0][1].offset]
    strides = {name: _row_stride(op, name, t, shape) for name, t, shape in
               (("x", x, (rows, Dn)), ("dt", dt, (rows, dt_cols)), ("B", B, (rows, N)), ("C", C, (rows, N)))}
    check_tensor(op, "D", D, dtype="f32", shape=(Dn,))
    part = slotted_state(op, "state", state, 2)
    require(part.dtype == "f32" and part.shape[1:] == (Dn, N),
            f"{op}: state must be [{Dn}, {N}] per slot, got {state.shape}")
    z_rs = _row_stride(op, "z", z, (rows, Dn)) if z is not None else 0
    require(dt_bias is None or z is not None, f"{op}: dt_bias comes with the gate z")
    if dt_bias is not None:
        check_tensor(op, "dt_bias", dt_bias, dtype="f32", shape=(Dn,))
    out = output(g, op, out, (rows, Dn))
    wide = all(v % 4 == 0 for v in (N, A.offset, B.offset, C.offset, part.offset,
                                     strides["B"], strides["C"]))
    slot_t, slot_words = slot_push(g, op, slots, rows, T, part, slot_lo)
    ins = [x, dt, A, B, C, D] + ([z] if z is not None else []) + ([dt_bias] if dt_bias is not None else [])
    kernel = "plain" if z is None else "gate" if dt_bias is None else "gate_dt"
    dt_aligned = dt_proj is not None and w_words[0] % 4 == 0 and w_words[1] % 4 == 0
    if dt_proj is not None:
        kernel = f"{'lane_' * (g.dev.load_share > 1)}dtproj_{dt_proj.dtype}"
        ins.append(dt_proj.parts[0][1])
    g.dispatch(f"ssm_scan.{kernel}", ins + [slot_t], [part, out],
               [T, Dn, x.offset, strides["x"], dt.offset, strides["dt"], A.offset,
                B.offset, strides["B"], C.offset, strides["C"], D.offset,
                z.offset if z is not None else 0, z_rs, part.offset, out.offset,
                dt_bias.offset if dt_bias is not None else 0, *slot_words, 1, 1, *w_words],
               _groups(ceil(Dn / WG), n_seq), spec=(N, int(wide), g.dev.load_share, int(dt_aligned)))
    return out


def ssm_scan_heads(g: Graph, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                   state: Tensor, dt_bias: Tensor, n_groups: int, out: Tensor | None = None,
                   slots: Tensor | None = None, n_seq: int = 1, slot_lo: int = 0) -> Tensor:
    """Mamba-2's scan: H heads of P = Dn / H channels, a scalar A [H] (already -exp(A_log)), D
    [H] and dt [rows, H] per head (softplus(dt + dt_bias[H]) taken here); B, C [rows, G * N]
    with head h reading group h // (H / G); x [rows, Dn]; state [Dn, N] per slot (head-major:
    channel h * P + p) updated in place -> y [rows, Dn], not gated."""
    op = "ssm_scan_heads"
    check_tensor(op, "A", A, dtype="f32")
    require(A.ndim == 1, f"{op}: A must be [n_heads], got {A.shape}")
    H = A.shape[0]
    require(n_groups >= 1 and H % n_groups == 0, f"{op}: {n_groups} groups do not divide {H} heads")
    T = _sequences(op, x, n_seq)
    rows, Dn = n_seq * T, x.shape[1]
    require(Dn % H == 0, f"{op}: {Dn} channels are not {H} heads of equal size")
    part = slotted_state(op, "state", state, 2)
    require(part.dtype == "f32" and part.shape[1] == Dn, f"{op}: state must be [{Dn}, d_state] per slot, "
                                                        f"got {state.shape}")
    N = part.shape[2]
    require(1 <= N <= MAX_D_STATE, f"{op}: d_state {N} is outside 1..{MAX_D_STATE}")
    strides = {name: _row_stride(op, name, t, shape) for name, t, shape in
               (("x", x, (rows, Dn)), ("dt", dt, (rows, H)), ("B", B, (rows, n_groups * N)),
                ("C", C, (rows, n_groups * N)))}
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        check_tensor(op, name, t, dtype="f32", shape=(H,))
    out = output(g, op, out, (rows, Dn))
    wide = all(v % 4 == 0 for v in (N, B.offset, C.offset, part.offset, strides["B"], strides["C"]))
    slot_t, slot_words = slot_push(g, op, slots, rows, T, part, slot_lo)
    # Shared loads of B and C (lane_heads) need them uniform over the group: one head per group.
    share = g.dev.load_share if (Dn // H) % WG == 0 else 1
    g.dispatch(f"ssm_scan.{'lane_' * (share > 1)}heads", [x, dt, A, B, C, D, dt_bias, slot_t], [part, out],
               [T, Dn, x.offset, strides["x"], dt.offset, strides["dt"], A.offset,
                B.offset, strides["B"], C.offset, strides["C"], D.offset, 0, 0, part.offset,
                out.offset, dt_bias.offset, *slot_words, Dn // H, H // n_groups, 0, 0],
               _groups(ceil(Dn / WG), n_seq), spec=(N, int(wide), share))
    return out


# ---- numpy twins (float64 inside); each returns (output, new state) ----------------------------
def ssm_conv_ref(x, state, w, b, silu=False):
    T, S, K = x.shape[0], state.shape[1], w.shape[1]
    window = np.concatenate([state, x.T], axis=1).astype(np.float64)         # [C, S+T]
    out = np.stack([(window[:, n:n + K] * w).sum(1) for n in range(T + S - K + 1)])
    if b is not None:
        out = out + b
    if silu:
        out = out / (1.0 + np.exp(-out))
    return out.astype(np.float32), window[:, T:].astype(np.float32)


def ssm_scan_heads_ref(x, dt, A, B, C, D, state, dt_bias, n_groups):
    """Mamba-2's recurrence in float64, head by head: state [H * P, N]."""
    dt = softplus_ref(np.asarray(dt, np.float32) + dt_bias).astype(np.float64)    # [T, H]
    T, Dn = x.shape
    H = A.shape[0]
    P, N = Dn // H, state.shape[1]
    group = np.arange(H) // (H // n_groups)
    xs = np.asarray(x, np.float64).reshape(T, H, P)
    Bs = np.asarray(B, np.float64).reshape(T, n_groups, N)[:, group]          # [T, H, N]
    Cs = np.asarray(C, np.float64).reshape(T, n_groups, N)[:, group]
    s = np.array(state, np.float64).reshape(H, P, N)
    y = np.empty((T, H, P))
    for t in range(T):
        s = s * np.exp(dt[t] * A)[:, None, None] + (dt[t][:, None] * xs[t])[:, :, None] * Bs[t][:, None, :]
        y[t] = (s * Cs[t][:, None, :]).sum(-1) + D[:, None] * xs[t]
    return y.reshape(T, Dn).astype(np.float32), s.reshape(Dn, N).astype(np.float32)


def ssm_scan_ref(x, dt, A, B, C, D, state, z=None, dt_bias=None):
    if dt_bias is not None:
        dt = softplus_ref(np.asarray(dt, np.float32) + dt_bias)
    x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
    s = np.array(state, np.float64)
    y = np.empty_like(x)
    for t in range(x.shape[0]):
        s = s * np.exp(dt[t][:, None] * A) + B[t][None, :] * (x[t] * dt[t])[:, None]
        y[t] = s @ C[t] + D * x[t]
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1.0 + np.exp(-z))
    return y.astype(np.float32), s.astype(np.float32)
