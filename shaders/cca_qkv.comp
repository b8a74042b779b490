#version 450
// ZAYA1 CCA from the raw projections to attention-ready q, k and v (zaya1.md §3.2 steps 2-7), in
// one dispatch: one work group per (head, sequence, block of TB tokens).
//
// c [rows, n_c] holds each row's q||k (n_qk = (H + Hkv) * dh columns), then v1 (this token's
// value half, v1w columns), then W2 x (v2w columns: val_proj2 of this token's input, the next
// token's delayed value). Head g's channels (g < H: query head g, else kv head g - H) see the
// window [cstate | c] (S = K1 - 1 + K2 - 1 columns of state, oldest first), go through the
// depthwise conv (K1 taps, tap 0 oldest, + bias), then the grouped conv (K2 taps over the head's
// own dh channels, + bias; its weight repacked as wt [head][i * K2 + tap][o], vkinfer.ops.cca.
// repack_grouped, so that neighbouring invocations, neighbouring outputs o, read neighbouring
// words), plus the q/k mean, then the L2 head norm (sqrt(dh) / ||.||, times
// k_scale for kv heads), then partial NEOX RoPE at the row's position, into q [rows, H, dh] or
// k [rows, Hkv, dh]. Work group g = H + Hkv writes v [rows, v1w + v2w] = [v1 | the previous
// row's W2 x] (the first row takes vstate's) and keeps the last row's W2 x in vstate.
// The token blocks run in parallel: only the first block's tokens (0 .. TB - 1, and S <= TB)
// read the states, and the first block writes them, each state column by the invocation that
// read it, after its last read. A block's TB tokens share each load of wt, and llvmpipe pays
// per load (and ends an invocation after 65535 loop iterations, which the old loop over all T
// tokens hit from token 215 of a ZAYA1 chunk).
// LANE (CPU devices): llvmpipe pays a loop over the SIMD lanes per load and then per component, so
// the grouped conv reads its weight in 64-bit words, 8 outputs per invocation (a u64vec4), and
// keeps the depthwise outputs as u64vec2s (needs shaderInt64): 0.62-0.67x the time of the GPU
// variant at ZAYA1-8B's decode shapes on llvmpipe.
//! variant plain
//! variant lane LANE
#include "common.glsl"
#define WG 64
#define TB 4                            // tokens per work group: a vec4 of each value
#define MAX_DH 256
#define MAX_K2 4
#define MAX_DH_K2 512                   // head_dim * grouped taps
#define NORM_EPS 1e-12
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer C { float c[]; };
layout(binding = 1) readonly buffer WDw { float w_dw[]; };
layout(binding = 2) readonly buffer BDw { float b_dw[]; };
layout(binding = 3) readonly buffer WGrp { float wt[]; };
#ifdef LANE
#include "wide_loads.glsl"
#define W_OUTS 8                        // grouped-conv outputs per invocation and weight load
layout(binding = 3) readonly buffer WGrpWide { u64vec4 wt_wide[]; };
void grouped_w(uint i, out vec4 w[2]) { u64vec4 v = wt_wide[i]; w[0] = float_quad(v.xy); w[1] = float_quad(v.zw); }
#define DWIN u64vec2
#define TO_DWIN(v) wide_of(v)
#define FROM_DWIN(v) float_quad(v)
#else
#define W_OUTS 4
layout(binding = 3) readonly buffer WGrp4 { vec4 wt4[]; };
void grouped_w(uint i, out vec4 w[1]) { w[0] = wt4[i]; }
#define DWIN vec4
#define TO_DWIN(v) (v)
#define FROM_DWIN(v) (v)
#endif
layout(binding = 4) readonly buffer BGrp { float b_grp[]; };
layout(binding = 5) readonly buffer KScale { float k_scale[]; };
layout(binding = 6) readonly buffer Pos { uint positions[]; };
layout(binding = 7) readonly buffer Turns { float turns_per_pos[]; };
#include "rope.glsl"
layout(binding = 8) readonly buffer Slots { uint slots[]; };
layout(binding = 9) buffer CState { float cstate[]; };
layout(binding = 10) buffer VState { float vstate[]; };
layout(binding = 11) writeonly buffer Q { float q[]; };
layout(binding = 12) writeonly buffer K { float k[]; };
layout(binding = 13) writeonly buffer V { float v[]; };

// Offsets in elements; has_dw_bias 0: b_dw is not read. The sequence q's slot is
// slots[slots_off + q * slots_step], inside the state parts' slots slot_lo .. + n_slots - 1.
layout(push_constant) uniform P {
    uint T; uint H; uint Hkv; uint dh; uint K1; uint K2; uint n_c; uint v1w; uint v2w; uint half_rot;
    uint has_dw_bias; float scale; uint c_off; uint wdw_off; uint bdw_off; uint wg_off; uint bg_off;
    uint ks_off; uint pos_off; uint tab_off; uint slots_off; uint slots_step; uint slot_lo;
    uint n_slots; uint cs_off; uint vs_off; uint q_off; uint k_off; uint v_off;
} p;

shared DWIN dwin[MAX_DH_K2];            // depthwise outputs of the K2 samples each token needs,
                                        // [channel][tap] as wt's rows, of the block's TB tokens
                                        // (13 KB in all, in Vulkan's 16 KB minimum)
shared vec4 val[MAX_DH];                // the head vectors before the norm
shared vec4 partial[WG];

uint c_base, cs_base, S;

// Sample j of channel ch's window [cstate | this sequence's c].
float window(uint ch, uint j) {
    return j < S ? cstate[cs_base + ch * S + j] : c[c_base + (j - S) * p.n_c + ch];
}

void main() {
    uint g = gl_WorkGroupID.x, seq = gl_WorkGroupID.y, n0 = gl_WorkGroupID.z * TB;
    uint t = gl_LocalInvocationID.x;
    uint slot = slot_in_part(slots[p.slots_off + seq * p.slots_step], p.slot_lo, p.n_slots);
    if (slot == NO_SLOT || n0 >= p.T) return;    // uniform over the work group
    uint n_tok = min(TB, p.T - n0);
    bool first_block = n0 == 0;
    uint n_qk = (p.H + p.Hkv) * p.dh;
    S = p.K1 - 1 + p.K2 - 1;
    c_base = p.c_off + seq * p.T * p.n_c;
    cs_base = p.cs_off + slot * n_qk * S;
    uint row0 = seq * p.T;

    if (g == p.H + p.Hkv) {             // the values
        uint vs_base = p.vs_off + slot * p.v2w, vw = p.v1w + p.v2w;
        for (uint n = n0; n < n0 + n_tok; n++) {
            uint at = c_base + n * p.n_c + n_qk, o = p.v_off + (row0 + n) * vw;
            for (uint i = t; i < p.v1w; i += WG) v[o + i] = c[at + i];
            for (uint i = t; i < p.v2w; i += WG)
                v[o + p.v1w + i] = n == 0 ? vstate[vs_base + i] : c[at - p.n_c + p.v1w + i];
        }
        if (first_block)
            for (uint i = t; i < p.v2w; i += WG)
                vstate[vs_base + i] = c[c_base + (p.T - 1) * p.n_c + n_qk + p.v1w + i];
        return;
    }

    uint ch0 = g * p.dh, per_kv = p.H / p.Hkv;
    bool wide = p.wg_off % W_OUTS == 0 && p.dh % W_OUTS == 0;
    bool is_q = g < p.H;
    // depthwise conv outputs n .. n + K2 - 1 of the head's channels for the block's tokens n
    // (a short last block repeats its last token and stores nothing of the copies)
    for (uint i = t; i < p.dh; i += WG) {
        uint ch = ch0 + i;
        float bias = p.has_dw_bias != 0u ? b_dw[p.bdw_off + ch] : 0.0;
        for (uint k2 = 0; k2 < p.K2; k2++) {
            vec4 acc = vec4(bias);
            for (uint k1 = 0; k1 < p.K1; k1++) {
                float w = w_dw[p.wdw_off + ch * p.K1 + k1];
                [[unroll]] for (uint b = 0; b < TB; b++) acc[b] += window(ch, n0 + min(b, n_tok - 1) + k2 + k1) * w;
            }
            dwin[i * p.K2 + k2] = TO_DWIN(acc);
        }
    }
    barrier();
    // grouped conv: W_OUTS neighbouring outputs per invocation where wt's rows are whole loads of
    // them, one otherwise
    uint w0 = p.wg_off + g * p.dh * p.K2 * p.dh;
    if (wide) {
        for (uint o = W_OUTS * t; o < p.dh; o += W_OUTS * WG) {
            vec4 acc[W_OUTS / 4][TB];
            [[unroll]] for (uint h = 0; h < W_OUTS / 4; h++)
                [[unroll]] for (uint b = 0; b < TB; b++) acc[h][b] = vec4(0.0);
            for (uint j = 0; j < p.dh * p.K2; j++) {
                vec4 w[W_OUTS / 4];
                grouped_w((w0 + j * p.dh + o) / W_OUTS, w);
                vec4 d = FROM_DWIN(dwin[j]);
                [[unroll]] for (uint h = 0; h < W_OUTS / 4; h++)
                    [[unroll]] for (uint b = 0; b < TB; b++) acc[h][b] += w[h] * d[b];
            }
            [[unroll]] for (uint h = 0; h < W_OUTS / 4; h++)
                [[unroll]] for (uint e = 0; e < 4; e++)
                    val[o + 4 * h + e] = vec4(acc[h][0][e], acc[h][1][e], acc[h][2][e], acc[h][3][e]);
        }
    } else {
        for (uint o = t; o < p.dh; o += WG) {
            vec4 acc = vec4(0.0);
            for (uint j = 0; j < p.dh * p.K2; j++) acc += wt[w0 + j * p.dh + o] * FROM_DWIN(dwin[j]);
            val[o] = acc;
        }
    }
    barrier();
    // + bias and the mean, and the sums of squares
    vec4 sum = vec4(0.0);
    for (uint o = t; o < p.dh; o += WG) {
        uint ch = ch0 + o;
        vec4 mean;
        [[unroll]] for (uint b = 0; b < TB; b++) {
            uint at = c_base + (n0 + min(b, n_tok - 1)) * p.n_c;
            if (is_q) {
                mean[b] = 0.5 * (c[at + ch] + c[at + p.H * p.dh + (g / per_kv) * p.dh + o]);
            } else {
                uint j = g - p.H;
                float qs = 0.0;
                for (uint h = j * per_kv; h < (j + 1) * per_kv; h++) qs += c[at + h * p.dh + o];
                mean[b] = 0.5 * (qs / float(per_kv) + c[at + ch]);
            }
        }
        vec4 y = val[o] + b_grp[p.bg_off + ch] + mean;
        val[o] = y;
        sum += y * y;
    }
    partial[t] = sum;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) partial[t] += partial[t + half_];
        barrier();
    }
    vec4 factor = p.scale / max(sqrt(partial[0]), NORM_EPS);
    if (!is_q) factor *= k_scale[p.ks_off + g - p.H];
    // RoPE of the normalised heads
    for (uint b = 0; b < n_tok; b++) {
        uint row = row0 + n0 + b;
        uint pos = positions[p.pos_off + row];
        uint out_at = is_q ? p.q_off + (row * p.H + g) * p.dh : p.k_off + (row * p.Hkv + g - p.H) * p.dh;
        for (uint o = t; o < p.dh; o += WG) {
            float a = val[o][b] * factor[b];
            if (o < p.half_rot) {
                float angle = rope_angle(pos, p.tab_off + 3 * o);
                float cs = cos(angle), sn = sin(angle);
                float bb = val[o + p.half_rot][b] * factor[b];
                float ra = a * cs - bb * sn, rb = bb * cs + a * sn;
                if (is_q) { q[out_at + o] = ra; q[out_at + o + p.half_rot] = rb; }
                else { k[out_at + o] = ra; k[out_at + o + p.half_rot] = rb; }
            } else if (o >= 2 * p.half_rot) {
                if (is_q) q[out_at + o] = a; else k[out_at + o] = a;
            }
        }
    }
    // new state = window[T .. T + S - 1]; increasing j reads cstate[T + j] before it is written
    if (first_block)
        for (uint i = t; i < p.dh; i += WG)
            for (uint j = 0; j < S; j++)
                cstate[cs_base + (ch0 + i) * S + j] = window(ch0 + i, p.T + j);
}
