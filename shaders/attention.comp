#version 450
// Causal GQA attention over slotted KV caches [n_slots, n_ctx, hkv, dh] / [.., dv]. Token row t
// has a position positions[t] and a slot slots[t * slots_step] (both read from buffers); a
// dispatch covers the slots slot_lo .. slot_lo + n_slots - 1 of one cache part and skips rows
// of other slots.
// `store_*`: writes k [T, hkv, dh] and v [T, hkv, dv] into row positions[t] of the slot's
//   cache (rows at or past n_ctx are dropped).
// `attend_*`: one work group per (token t, query head h); query t sees its slot's cache rows
//   0 .. positions[t] through an online softmax over tiles of WG keys, all in F32.
// `attend_rows_*` (CPU devices): one invocation per (token t, query head h) runs the whole online
//   softmax alone, KEYS keys at a time (see there).
// The f16 variants keep the caches as halves packed two to a uint word.
//! variant store_f32 STORE
//! variant store_f16 STORE F16_CACHE
//! variant attend_f32 ATTEND
//! variant attend_f16 ATTEND F16_CACHE
//! variant attend_rows_f32 ATTEND_ROWS
//! variant attend_rows_f16 ATTEND_ROWS F16_CACHE
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

#if defined(ATTEND) || defined(ATTEND_ROWS)
#define NEG_BIG -3.0e38
#ifdef ATTEND_ROWS
// Four cache words a load: llvmpipe (Mesa 22.3) loads each invocation's words one by one, so
// wide loads are what make a loop over keys cheap.
#ifdef F16_CACHE
#define CACHE4_T uvec4
#else
#define CACHE4_T vec4
#endif
layout(binding = 1) readonly buffer KCache { CACHE4_T k_cache[]; };
layout(binding = 2) readonly buffer VCache { CACHE4_T v_cache[]; };
#else
layout(binding = 1) readonly buffer KCache { CACHE_T k_cache[]; };
layout(binding = 2) readonly buffer VCache { CACHE_T v_cache[]; };
#endif
layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 3) readonly buffer Positions { uint positions[]; };
layout(binding = 4) readonly buffer Slots { uint slots[]; };
layout(binding = 5) writeonly buffer Out { float o[]; };

// Offsets in elements of each buffer's type (cache offsets in halves for f16, and even).
layout(push_constant) uniform P {
    uint tokens; uint hq; uint hkv; uint dh; uint dv; uint n_ctx;
    uint q_off; uint kc_off; uint vc_off; uint pos_off; uint o_off; float scale;
    uint slots_off; uint slots_step; uint slot_lo; uint n_slots;
} p;
#endif

#ifdef ATTEND
#define WG 64
#define MAX_DIM 256
#define DIMS_PER_THREAD (MAX_DIM / WG)
layout(local_size_x = WG) in;

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

#ifdef ATTEND_ROWS
// llvmpipe vectorizes invocations, not loops, and silently ends an invocation after 65535 loop
// iterations in all (attention.py). So each invocation walks its keys itself: DH and DV are
// specialization constants and every loop but the one over blocks of KEYS keys unrolls, which
// keeps q, the scores and the output row in registers and the loop count at n_keys / KEYS. A
// work group holds ROWS_WG (token, head) rows of one kv head, heads fastest. A subgroup's rows
// take their slots in rounds (one round for a prompt chunk's tokens, which share a slot): each
// round walks the keys of its longest row at addresses uniform over the round's rows, and the
// others mask the keys past their own. One call of walk keeps the shader small: llvmpipe
// compiles every load into a branch per invocation, and KEYS = 8 or a second walk for mixed
// slots took 18-65 s to compile cold (KEYS = 4: 6.7 s for 128-wide F32 heads).
#extension GL_KHR_shader_subgroup_ballot : require
#extension GL_KHR_shader_subgroup_vote : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define ROWS_WG 16
#define KEYS 4
layout(local_size_x = ROWS_WG) in;
layout(constant_id = 0) const uint DH = 128;
layout(constant_id = 1) const uint DV = 128;

float qv[DH];
float acc[DV];
float m = NEG_BIG, l = 0.0;                       // running max and sum of exp(score - m)

#ifdef F16_CACHE
#define PER_LOAD 8
vec4 lo4(uvec4 w) { return vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y)); }
vec4 hi4(uvec4 w) { return vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w)); }
// The dot product of q[d .. d + 7] with the 8 halves in w, and acc[d .. d + 7] += prob * them.
#define DOT_LOAD(x8, d) (dot(vec4(qv[d], qv[d + 1], qv[d + 2], qv[d + 3]), lo4(x8)) + \
                         dot(vec4(qv[d + 4], qv[d + 5], qv[d + 6], qv[d + 7]), hi4(x8)))
#define ACC_LOAD(x8, d, prob) { uvec4 w8 = x8; vec4 a = lo4(w8), b = hi4(w8); \
    acc[d] += prob * a.x; acc[d + 1] += prob * a.y; acc[d + 2] += prob * a.z; acc[d + 3] += prob * a.w; \
    acc[d + 4] += prob * b.x; acc[d + 5] += prob * b.y; acc[d + 6] += prob * b.z; acc[d + 7] += prob * b.w; }
#else
#define PER_LOAD 4
#define DOT_LOAD(x4, d) dot(vec4(qv[d], qv[d + 1], qv[d + 2], qv[d + 3]), x4)
#define ACC_LOAD(x4, d, prob) { vec4 a = x4; acc[d] += prob * a.x; acc[d + 1] += prob * a.y; \
    acc[d + 2] += prob * a.z; acc[d + 3] += prob * a.w; }
#endif

// Keys 0 .. n_walk - 1 (the last block reads key n_walk - 1 for those past it), of which this
// row sees the first n_keys; key 0 is always seen, so m is finite after the first block and the
// masked keys' exp(NEG_BIG - m) are 0 (their rows, below n_walk, are the longest row's keys).
void walk(uint k_base, uint v_base, uint n_walk, uint n_keys) {
    uint k_stride = p.hkv * DH, v_stride = p.hkv * DV;
    for (uint k0 = 0; k0 < n_walk; k0 += KEYS) {
        float s[KEYS];
        float m_new = m;
        [[unroll]] for (uint u = 0; u < KEYS; ++u) {
            uint kb = (k_base + min(k0 + u, n_walk - 1) * k_stride) / PER_LOAD;
            float score = 0.0;
            [[unroll]] for (uint d = 0; d < DH; d += PER_LOAD) score += DOT_LOAD(k_cache[kb + d / PER_LOAD], d);
            s[u] = k0 + u < n_keys ? score : NEG_BIG;
            m_new = max(m_new, s[u]);
        }
        float correction = exp(m - m_new);
        l *= correction;
        [[unroll]] for (uint d = 0; d < DV; ++d) acc[d] *= correction;
        [[unroll]] for (uint u = 0; u < KEYS; ++u) {
            uint vb = (v_base + min(k0 + u, n_walk - 1) * v_stride) / PER_LOAD;
            float prob = exp(s[u] - m_new);
            l += prob;
            [[unroll]] for (uint d = 0; d < DV; d += PER_LOAD) ACC_LOAD(v_cache[vb + d / PER_LOAD], d, prob);
        }
        m = m_new;
    }
}

void main() {
    uint per_kv = p.hq / p.hkv;
    uint groups_per_kv = (p.tokens * per_kv + ROWS_WG - 1) / ROWS_WG;
    uint kv_head = group_index() / groups_per_kv;
    uint i = (group_index() % groups_per_kv) * ROWS_WG + gl_LocalInvocationID.x;
    if (kv_head >= p.hkv || i >= p.tokens * per_kv) return;
    uint t = i / per_kv, row = t * p.hq + kv_head * per_kv + i % per_kv;
    uint slot = slot_in_part(slots[p.slots_off + t * p.slots_step], p.slot_lo, p.n_slots);
    if (slot == NO_SLOT) return;
    uint n_keys = min(positions[p.pos_off + t] + 1, p.n_ctx);
    uint k_base = p.kc_off + slot * p.n_ctx * p.hkv * DH + kv_head * DH;
    uint v_base = p.vc_off + slot * p.n_ctx * p.hkv * DV + kv_head * DV;

    [[unroll]] for (uint d = 0; d < DH; ++d) qv[d] = q[p.q_off + row * DH + d] * p.scale;
    [[unroll]] for (uint d = 0; d < DV; ++d) acc[d] = 0.0;
    for (;;) {                                   // a round per slot among the subgroup's rows
        if (subgroupBroadcastFirst(slot) == slot) {
            walk(subgroupBroadcastFirst(k_base), subgroupBroadcastFirst(v_base), subgroupMax(n_keys), n_keys);
            break;
        }
    }
    [[unroll]] for (uint d = 0; d < DV; ++d) o[p.o_off + row * DV + d] = acc[d] / l;
}
#endif
