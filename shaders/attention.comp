#version 450
// Causal GQA attention over slotted KV caches [n_slots, n_ctx, hkv, dh] / [.., dv]. Token row t
// has a position positions[t] and a slot slots[t * slots_step] (both read from buffers); a
// dispatch covers the slots slot_lo .. slot_lo + n_slots - 1 of one cache part and skips rows
// of other slots.
// `store_*`: writes k [T, hkv, dh] and v [T, hkv, dv] into row positions[t] of the slot's
//   cache (rows at or past n_ctx are dropped).
// `attend_*`: one work group per (token t, query head h); query t sees its slot's cache rows
//   0 .. positions[t] through an online softmax over tiles of WG keys, all in F32.
// The f16 variants keep the caches as halves packed two to a uint word.
//! variant store_f32 STORE
//! variant store_f16 STORE F16_CACHE
//! variant attend_f32 ATTEND
//! variant attend_f16 ATTEND F16_CACHE
#include "common.glsl"

#ifdef F16_CACHE
#define CACHE_T uint
#else
#define CACHE_T float
#endif

#ifdef STORE
layout(local_size_x = 256) in;
layout(binding = 0) readonly buffer K { float k[]; };
layout(binding = 1) readonly buffer V { float v[]; };
layout(binding = 2) readonly buffer Positions { uint positions[]; };
layout(binding = 3) readonly buffer Slots { uint slots[]; };
layout(binding = 4) writeonly buffer KCache { CACHE_T k_cache[]; };
layout(binding = 5) writeonly buffer VCache { CACHE_T v_cache[]; };

// nk, nv, row_k, row_v and the cache offsets count cache words (f16: two halves a word);
// k_off, v_off count floats.
layout(push_constant) uniform P {
    uint nk; uint nv; uint row_k; uint row_v; uint n_ctx;
    uint k_off; uint v_off; uint pos_off; uint kc_off; uint vc_off;
    uint slots_off; uint slots_step; uint slot_lo; uint n_slots;
} p;

#ifdef F16_CACHE
#define LOAD(buf, off, w) packHalf2x16(vec2(buf[off + 2 * (w)], buf[off + 2 * (w) + 1]))
#else
#define LOAD(buf, off, w) buf[off + (w)]
#endif

void main() {
    uint i = GLOBAL_INDEX;
    bool is_k = i < p.nk;
    if (!is_k) i -= p.nk;
    uint row_words = is_k ? p.row_k : p.row_v;
    if (!is_k && i >= p.nv) return;
    uint t = i / row_words;
    uint slot = slot_in_part(slots[p.slots_off + t * p.slots_step], p.slot_lo, p.n_slots);
    uint pos = positions[p.pos_off + t];
    if (slot == NO_SLOT || pos >= p.n_ctx) return;
    uint at = (slot * p.n_ctx + pos) * row_words + i % row_words;
    if (is_k) k_cache[p.kc_off + at] = LOAD(k, p.k_off, i);
    else v_cache[p.vc_off + at] = LOAD(v, p.v_off, i);
}
#endif

#ifdef ATTEND
#define WG 64
#define MAX_DIM 256
#define DIMS_PER_THREAD (MAX_DIM / WG)
#define NEG_BIG -3.0e38
layout(local_size_x = WG) in;
layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer KCache { CACHE_T k_cache[]; };
layout(binding = 2) readonly buffer VCache { CACHE_T v_cache[]; };
layout(binding = 3) readonly buffer Positions { uint positions[]; };
layout(binding = 4) readonly buffer Slots { uint slots[]; };
layout(binding = 5) writeonly buffer Out { float o[]; };

// Offsets in elements of each buffer's type (cache offsets in halves for f16, and even).
layout(push_constant) uniform P {
    uint tokens; uint hq; uint hkv; uint dh; uint dv; uint n_ctx;
    uint q_off; uint kc_off; uint vc_off; uint pos_off; uint o_off; float scale;
    uint slots_off; uint slots_step; uint slot_lo; uint n_slots;
} p;

shared float q_sh[MAX_DIM];
shared float score[WG];
shared float prob[WG];

float key_dot(uint key_base) {
    float s = 0.0;
#ifdef F16_CACHE
    for (uint d = 0; d < p.dh; d += 2) {
        vec2 kk = unpackHalf2x16(k_cache[(key_base + d) >> 1]);
        s += q_sh[d] * kk.x + q_sh[d + 1] * kk.y;
    }
#else
    for (uint d = 0; d < p.dh; ++d) s += q_sh[d] * k_cache[key_base + d];
#endif
    return s;
}

float value_at(uint e) {
#ifdef F16_CACHE
    return unpackHalf2x16(v_cache[e >> 1])[e & 1u];
#else
    return v_cache[e];
#endif
}

void main() {
    uint row = group_index();                    // t * hq + h
    if (row >= p.tokens * p.hq) return;          // uniform over the work group
    uint lane = gl_LocalInvocationID.x;
    uint t = row / p.hq;
    uint kv_head = (row % p.hq) / (p.hq / p.hkv);
    uint slot = slot_in_part(slots[p.slots_off + t * p.slots_step], p.slot_lo, p.n_slots);
    if (slot == NO_SLOT) return;                 // uniform too
    uint n_keys = min(positions[p.pos_off + t] + 1, p.n_ctx);
    uint k_stride = p.hkv * p.dh, v_stride = p.hkv * p.dv;
    uint k_base = p.kc_off + slot * p.n_ctx * k_stride + kv_head * p.dh;
    uint v_base = p.vc_off + slot * p.n_ctx * v_stride + kv_head * p.dv;

    for (uint d = lane; d < p.dh; d += WG) q_sh[d] = q[p.q_off + row * p.dh + d] * p.scale;
    barrier();

    float m = NEG_BIG, l = 0.0;                  // running max and sum of exp(score - m)
    float acc[DIMS_PER_THREAD];
    [[unroll]] for (uint c = 0; c < DIMS_PER_THREAD; ++c) acc[c] = 0.0;

    for (uint k0 = 0; k0 < n_keys; k0 += WG) {
        uint n_tile = min(WG, n_keys - k0);
        if (lane < n_tile) score[lane] = key_dot(k_base + (k0 + lane) * k_stride);
        barrier();
        float m_new = m;
        for (uint u = 0; u < n_tile; ++u) m_new = max(m_new, score[u]);
        if (lane < n_tile) prob[lane] = exp(score[lane] - m_new);
        barrier();
        // score is not written again before every thread passes the next tile's first barrier,
        // and prob not before its second, so two barriers a tile are enough.
        float correction = exp(m - m_new);
        l *= correction;
        for (uint u = 0; u < n_tile; ++u) l += prob[u];
        [[unroll]] for (uint c = 0; c < DIMS_PER_THREAD; ++c) {
            uint d = lane + c * WG;
            if (d < p.dv) {
                float sum = acc[c] * correction;
                for (uint u = 0; u < n_tile; ++u) sum += prob[u] * value_at(v_base + (k0 + u) * v_stride + d);
                acc[c] = sum;
            }
        }
        m = m_new;
    }
    [[unroll]] for (uint c = 0; c < DIMS_PER_THREAD; ++c) {
        uint d = lane + c * WG;
        if (d < p.dv) o[p.o_off + row * p.dv + d] = acc[c] / l;
    }
}
#endif
