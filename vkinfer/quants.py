"""Block quantizers for GGUF: ggml's reference algorithms (ggml-quants.c, no importance matrix),
vectorized in numpy over all blocks at once.

`quantize(rows, qtype)` takes float32 rows (n_rows, n_per_row) and returns their blocks as uint8
(n_rows, row_bytes). The legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: round to nearest) come from
gguf-py's reference quantizers. The K-quants are written here after ggml's `quantize_row_q*_K_ref`:
a per-sub-block scale (and min) search, then 4- or 6-bit scales relative to one F16 super-block
scale, then the weights rounded again against the scales as stored.

ggml computes in float32, one element after the other; the sums here keep that order (numpy
reduces an array of shape (n, blocks) along axis 0 one row after another) so that the blocks come
out bit-identical. Sub-block arrays are laid out (n, blocks): element i of every block is a row."""
import numpy as np

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)


def _nearest(v):
    """ggml's nearest_int: round half to even (float32 in, float32 out)."""
    return np.rint(v)


def _f16(v):
    """A float32 value stored as F16 and read back, as GGML_FP32_TO_FP16 then GGML_FP16_TO_FP32."""
    return v.astype(np.float16).astype(F32)


def _sub_blocks(x, n):
    """(n_super, 256) -> (n, n_super * 256 / n): element i of every sub-block of n is row i."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _whole(sub, n_super):
    """The inverse of _sub_blocks."""
    return np.ascontiguousarray(sub.T).reshape(n_super, QK_K)


def _signed_absmax(xs):
    """The value of largest magnitude along axis 0 (the first one on a tie, as ggml's `>` loop)."""
    return np.take_along_axis(xs, np.abs(xs).argmax(axis=0)[None], axis=0)[0]


# ---- scale searches (ggml's make_qkx2_quants, make_qx_quants, make_q3_quants) -----------------
def search_scale_min(xs, ws, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants for every sub-block: the scale and min (both >= 0) and the levels
    0..nmax minimizing the weighted error of scale*L - min, over nstep+1 trial scales; each trial
    starts from the best min so far, as in ggml."""
    nmax_f = F32(nmax)
    lo = lo_start = np.minimum(xs.min(axis=0), F32(0))
    hi = xs.max(axis=0)
    flat = hi == lo
    hi = np.where(flat, lo + F32(1), hi)                 # any span: flat blocks are reset below
    sum_w = ws.sum(axis=0)
    sum_x = (ws * xs).sum(axis=0)
    trial, wl, work = np.empty_like(xs), np.empty_like(xs), np.empty_like(xs)

    def round_levels(iscale, mn, out):                   # clip(nearest(iscale * (x - min)))
        np.subtract(xs, mn, out=out)
        out *= iscale
        np.rint(out, out=out)
        np.maximum(out, F32(0), out=out)
        np.minimum(out, nmax_f, out=out)
        return out

    def error(scale, mn, levels):                        # sum of w * |scale*L + min - x|^(1 or 2)
        diff = np.multiply(levels, scale, out=work)
        diff += mn
        diff -= xs
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= ws
        return diff.sum(axis=0)

    best_iscale, best_lo = nmax_f / (hi - lo), lo     # the trial whose levels are kept
    scale = F32(1) / best_iscale
    best = error(scale, lo, round_levels(best_iscale, lo, trial))
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + nmax_f) / (hi - lo)
            round_levels(iscale, lo, trial)
            np.multiply(ws, trial, out=wl)
            sum_l = wl.sum(axis=0)
            np.multiply(wl, xs, out=work)
            sum_xl = work.sum(axis=0)
            wl *= trial
            sum_l2 = wl.sum(axis=0)
            det = sum_w * sum_l2 - sum_l * sum_l
            t_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            t_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = t_min > 0
            t_scale = np.where(positive, sum_xl / sum_l2, t_scale)
            t_min = np.where(positive, F32(0), t_min)
            cur = error(t_scale, t_min, trial)
            better = (det > 0) & (cur < best)
            best_iscale = np.where(better, iscale, best_iscale)
            best_lo = np.where(better, lo, best_lo)
            best = np.where(better, cur, best)
            scale = np.where(better, t_scale, scale)
            lo = np.where(better, t_min, lo)
    levels = round_levels(best_iscale, best_lo, trial)
    scale = np.where(flat, F32(0), scale)
    levels[:, flat] = 0
    return scale, -np.where(flat, lo_start, lo), levels


def search_scale_symmetric(xs, nmax):
    """make_qx_quants(rmse_type 1, no weights) for every sub-block: a signed scale and levels
    -nmax..nmax-1 (returned offset by nmax), trying 19 scales around nmax/max|x|, weights x²."""
    nmax_f = F32(nmax)
    big = _signed_absmax(xs)
    zero = np.abs(big) < GROUP_MAX_EPS
    big = np.where(zero, F32(1), big)
    w = xs * xs
    wx = w * xs
    trial, work = np.empty_like(xs), np.empty_like(xs)

    def fit(iscale, lv):                                 # levels, sum w*x*l, sum w*l*l
        np.multiply(xs, iscale, out=lv)
        np.rint(lv, out=lv)
        np.maximum(lv, F32(-nmax), out=lv)
        np.minimum(lv, F32(nmax - 1), out=lv)
        sumlx = np.multiply(wx, lv, out=work).sum(axis=0)
        wl2 = np.multiply(w, lv, out=work)
        wl2 *= lv
        return lv, sumlx, wl2.sum(axis=0)

    best_iscale = -nmax_f / big
    _, sumlx, suml2 = fit(best_iscale, trial)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(nmax_f + F32(0.1) * F32(step)) / big
            _, slx, sl2 = fit(iscale, trial)
            better = (sl2 > 0) & (slx * slx > best * sl2)
            best_iscale = np.where(better, iscale, best_iscale)
            scale = np.where(better, slx / sl2, scale)
            best = np.where(better, scale * slx, best)
    levels, _, _ = fit(best_iscale, trial)              # the levels of the best trial
    return np.where(zero, F32(0), scale), np.where(zero, F32(0), levels + nmax_f)


def search_scale_q3(xs, nmax):
    """make_q3_quants(do_rmse) for every sub-block: levels from nmax/max|x|, then up to five
    passes that move one level at a time while the weighted fit (weights x²) improves."""
    n = xs.shape[0]
    big = _signed_absmax(xs)
    zero = np.abs(big) < GROUP_MAX_EPS
    big = np.where(zero, F32(1), big)
    w = xs * xs
    wx = w * xs
    levels = np.clip(_nearest(F32(-nmax) / big * xs), -nmax, nmax - 1)
    sumlx = (wx * levels).sum(axis=0)
    suml2 = ((w * levels) * levels).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # ggml stops after a pass without changes; a further pass would change nothing either
        for _ in range(5):
            for i in range(n):
                cur = levels[i]
                slx = sumlx - wx[i] * cur
                sl2 = suml2 - (w[i] * cur) * cur
                new = np.clip(_nearest(xs[i] * sl2 / slx), -nmax, nmax - 1)
                slx_new = slx + wx[i] * new
                sl2_new = sl2 + (w[i] * new) * new
                take = ((slx > 0) & (new != cur) & (sl2_new > 0)
                        & ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new))
                levels[i] = np.where(take, new, cur)
                sumlx = np.where(take, slx_new, sumlx)
                suml2 = np.where(take, sl2_new, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero, F32(0), levels + F32(nmax))


# ---- packing ----------------------------------------------------------------------------------
def _f16_bytes(v):
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _pack_2bit(levels):
    """(nb, 256) levels 0..3 -> (nb, 64): per 128 weights, byte l holds l, l+32, l+64, l+96."""
    q = levels.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def pack_scales_k4(ls, lm):
    """Eight 6-bit scales and mins (nb, 8) -> ggml's 12-byte get_scale_min_k4 layout."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _requantize(x, levels, d, mn, lo, hi):
    """ggml's last pass: round each weight against its sub-block's stored scale d (and min mn);
    a sub-block whose stored scale is 0 keeps the levels of the search."""
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(_nearest((x + mn) / d), lo, hi)
    return np.where(d != 0, again, levels)


# ---- the K-quants -----------------------------------------------------------------------------
# sub-block size, largest level, and make_qkx2_quants' (rmin, rdelta, nstep, use_mad)
_SCALE_MIN_TYPES = {"Q2_K": (16, 3, -0.5, 0.1, 15, True),
                    "Q4_K": (32, 15, -1.0, 0.1, 20, False),
                    "Q5_K": (32, 31, -0.5, 0.1, 15, False)}


def _quantize_scale_min(x, qtype):
    """Q2_K, Q4_K, Q5_K (quantize_row_q{2,4,5}_K_ref): scale and min per sub-block."""
    n, nmax, rmin, rdelta, nstep, use_mad = _SCALE_MIN_TYPES[qtype]
    nb = x.shape[0]
    xs = _sub_blocks(x, n)
    if qtype == "Q2_K":
        ws = np.abs(xs)
    else:
        av_x = np.sqrt((xs * xs).sum(axis=0) / F32(n))
        ws = av_x + np.abs(xs)
    scales, mins, levels = search_scale_min(xs, ws, nmax, rmin, rdelta, nstep, use_mad)
    scales, mins = scales.reshape(nb, -1), mins.reshape(nb, -1)
    levels = _whole(levels, nb)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    smax = F32(15) if qtype == "Q2_K" else F32(63)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, smax / max_scale, F32(0))[:, None]
        inv_min = np.where(max_min > 0, smax / max_min, F32(0))[:, None]
    ls = _nearest(inv_scale * scales).astype(np.int32)
    lm = _nearest(inv_min * mins).astype(np.int32)
    d = np.where(max_scale > 0, max_scale / smax, F32(0))
    dmin = np.where(max_min > 0, max_min / smax, F32(0))
    if qtype != "Q2_K":                                  # stored as uint8, then capped at 63
        ls, lm = np.minimum(ls & 0xFF, 63), np.minimum(lm & 0xFF, 63)
    sub_d = np.repeat(_f16(d)[:, None] * ls.astype(F32), n, axis=1)
    sub_m = np.repeat(_f16(dmin)[:, None] * lm.astype(F32), n, axis=1)
    levels = _requantize(x, levels, sub_d, sub_m, 0, nmax).astype(np.uint8)
    if qtype == "Q2_K":
        scale_bytes = ((ls & 0xF) | (lm << 4)).astype(np.uint8)
        return np.concatenate([scale_bytes, _pack_2bit(levels), _f16_bytes(d), _f16_bytes(dmin)],
                              axis=1)
    head = [_f16_bytes(d), _f16_bytes(dmin), pack_scales_k4(ls, lm)]
    q = levels.reshape(nb, 4, 2, 32)                     # per 64 weights: low half, high half
    if qtype == "Q4_K":
        return np.concatenate(head + [(q[:, :, 0] | (q[:, :, 1] << 4)).reshape(nb, 128)], axis=1)
    low = q & 0xF
    high = (q >> 4).astype(np.uint8)                     # bit 4 of weight 64j+32h+l -> qh[l] bit 2j+h
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    qh = np.bitwise_or.reduce((high << shifts[None, :, :, None]).reshape(nb, 8, 32), axis=1)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate(head + [qh, ql], axis=1)


def _quantize_q3_k(x):
    """Q3_K (quantize_row_q3_K_ref): signed 6-bit scales, levels -4..3 with the high bit apart."""
    nb = x.shape[0]
    scales, levels = search_scale_q3(_sub_blocks(x, 16), 4)
    scales = scales.reshape(nb, 16)
    levels = _whole(levels, nb)
    max_scale = _signed_absmax(scales.T)
    has_scale = max_scale != 0
    with np.errstate(divide="ignore"):
        iscale = np.where(has_scale, F32(-32) / max_scale, F32(0))
    ls = np.clip(_nearest(iscale[:, None] * scales), -32, 31).astype(np.int32) + 32
    ls = np.where(has_scale[:, None], ls, 0)
    with np.errstate(divide="ignore"):
        d = np.where(has_scale, F32(1) / iscale, F32(0))
    sub_d = np.repeat(_f16(d)[:, None] * (ls - 32).astype(F32), 16, axis=1)
    levels = _requantize(x, levels, sub_d, F32(0), -4, 3)
    levels = np.where(sub_d != 0, levels + F32(4), levels).astype(np.uint8)
    ls = ls.astype(np.uint8)
    scale_bytes = np.zeros((nb, 12), np.uint8)
    scale_bytes[:, 0:8] = (ls[:, 0:8] & 0xF) | ((ls[:, 8:16] & 0xF) << 4)
    high2 = (ls >> 4).reshape(nb, 4, 4)                  # scale j: bits 4-5 at byte 8 + j%4
    scale_bytes[:, 8:12] = (high2[:, 0] | (high2[:, 1] << 2) | (high2[:, 2] << 4)
                            | (high2[:, 3] << 6))
    hbit = (levels > 3).reshape(nb, 8, 32).astype(np.uint8)     # weight 32k+m -> hmask[m] bit k
    hmask = np.bitwise_or.reduce(hbit << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    levels = levels & 3
    return np.concatenate([hmask, _pack_2bit(levels), scale_bytes, _f16_bytes(d)], axis=1)


def _quantize_q6_k(x):
    """Q6_K (quantize_row_q6_K_ref): signed 8-bit scales per 16, levels -32..31."""
    nb = x.shape[0]
    scales, levels = search_scale_symmetric(_sub_blocks(x, 16), 32)
    scales = scales.reshape(nb, 16)
    levels = _whole(levels, nb)
    max_scale = _signed_absmax(scales.T)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    max_scale = np.where(zero, F32(1), max_scale)
    iscale = F32(-128) / max_scale
    d = np.where(zero, F32(0), F32(1) / iscale)
    ls = np.minimum(_nearest(iscale[:, None] * scales), 127).astype(np.int8)
    ls = np.where(zero[:, None], np.int8(0), ls)
    sub_d = np.repeat(_f16(d)[:, None] * ls.astype(F32), 16, axis=1)
    levels = _requantize(x, levels, sub_d, F32(0), -32, 31)
    levels = np.where(sub_d != 0, levels + F32(32), levels)
    levels = np.where(zero[:, None], F32(0), levels).astype(np.uint8)
    q = levels.reshape(nb, 2, 4, 32)                     # per 128 weights, four rows of 32
    ql = np.concatenate([q[:, :, 0] & 0xF | ((q[:, :, 2] & 0xF) << 4),
                         q[:, :, 1] & 0xF | ((q[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    hi = q >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, ls.view(np.uint8), _f16_bytes(d)], axis=1)


_K_QUANTS = {"Q2_K": lambda x: _quantize_scale_min(x, "Q2_K"),
             "Q3_K": _quantize_q3_k,
             "Q4_K": lambda x: _quantize_scale_min(x, "Q4_K"),
             "Q5_K": lambda x: _quantize_scale_min(x, "Q5_K"),
             "Q6_K": _quantize_q6_k}
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
TYPES = LEGACY + tuple(_K_QUANTS)


def block_size(qtype: str) -> int:
    return QK_K if qtype in _K_QUANTS else 32


def quantize(rows: np.ndarray, qtype: str) -> np.ndarray:
    """float32 rows (n_rows, n_per_row), n_per_row a multiple of block_size(qtype) -> uint8
    (n_rows, row bytes)."""
    import gguf
    rows = np.ascontiguousarray(rows, F32)
    n_rows, n_per_row = rows.shape
    if qtype in LEGACY:
        return gguf.quants.quantize(rows, gguf.GGMLQuantizationType[qtype])
    blocks = _K_QUANTS[qtype](rows.reshape(-1, QK_K))
    return blocks.reshape(n_rows, -1)
