#version 450
// ZAYA's delayed residual merge and the next block's input norm in one pass, one work group per
// row (zaya1.md §3.1): res = (res + rb) * rw + (h + hb) * hw (`first`: res = (h + hb) * hw), then
// x = res / sqrt(mean(res^2) + eps) * nw. `combine` first weights h, a top-1 MoE block's expert
// output, by the router probability of the token's slot, and the skip slot (id >= skip) by 0
// (zaya1.md §3.3 steps 7-8; the MoE block then needs no combine pass of its own).
//! variant first FIRST
//! variant merge
//! variant combine COMBINE
#include "common.glsl"
#define WG 64          // as rms_norm.comp: lavapipe pays per invocation and per barrier
layout(local_size_x = WG) in;

#ifdef FIRST
#define N_RES 0
#else
#define N_RES 2
#endif
#ifdef COMBINE
#define N_COMB 2
#else
#define N_COMB 0
#endif

layout(binding = 0) readonly buffer H { float h[]; };
layout(binding = 1) readonly buffer HB { float hb[]; };
layout(binding = 2) readonly buffer HW { float hw[]; };
layout(binding = 3) readonly buffer NW { float nw[]; };
#ifndef FIRST
layout(binding = 4) readonly buffer RB { float rb[]; };
layout(binding = 5) readonly buffer RW { float rw[]; };
#endif
#ifdef COMBINE
layout(binding = 4 + N_RES) readonly buffer Probs { float probs[]; };
layout(binding = 5 + N_RES) readonly buffer Ids { uint ids[]; };
#endif
layout(binding = 4 + N_RES + N_COMB) buffer Res { float res[]; };
layout(binding = 5 + N_RES + N_COMB) writeonly buffer X { float x[]; };

// Offsets in elements; skip = the skip slot (probs rows have skip + 1 columns).
layout(push_constant) uniform P {
    uint rows; uint cols; float eps; uint h_off; uint hb_off; uint hw_off; uint nw_off;
    uint rb_off; uint rw_off; uint p_off; uint id_off; uint res_off; uint x_off; uint skip;
} p;

shared float partial[WG];

void main() {
    uint row = group_index();
    if (row >= p.rows) return;          // uniform over the work group: the grid may overshoot
    uint t = gl_LocalInvocationID.x;
    uint at = row * p.cols;

    float scale = 1.0;
#ifdef COMBINE
    uint slot = min(ids[p.id_off + row], p.skip);
    scale = slot < p.skip ? probs[p.p_off + row * (p.skip + 1) + slot] : 0.0;
#endif
    float sum = 0.0;
    for (uint c = t; c < p.cols; c += WG) {
        float hc = scale == 0.0 ? 0.0 : h[p.h_off + at + c] * scale;
        float r = (hc + hb[p.hb_off + c]) * hw[p.hw_off + c];
#ifndef FIRST
        r += (res[p.res_off + at + c] + rb[p.rb_off + c]) * rw[p.rw_off + c];
#endif
        res[p.res_off + at + c] = r;    // read back below by this same invocation
        sum += r * r;
    }
    partial[t] = sum;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) partial[t] += partial[t + half_];
        barrier();
    }
    float inv_rms = inversesqrt(partial[0] / float(p.cols) + p.eps);
    for (uint c = t; c < p.cols; c += WG)
        x[p.x_off + at + c] = res[p.res_off + at + c] * inv_rms * nw[p.nw_off + c];
}
