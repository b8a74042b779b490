#version 450
// Partial NEOX RoPE over x [T, heads, dh]: dims i and i + half (i < half = n_rot / 2) rotate by
// pos[t] * freq_i; dims >= n_rot are copied. One invocation per rotated pair or copied dim, so
// o may be x itself.
//
// The angle is reduced in turns, exactly where it matters: freq_i / 2pi comes from the host as
// hi + mid + lo, hi and mid with 12 significant bits each, and pos = pos_hi + pos_lo with
// pos_lo < 4096 and pos_hi a multiple of 4096 (12 significant bits below 2^24), so the four
// products of those parts are exact in F32 and so are their fractions. Only pos * lo (under
// 2^-24 of the angle) and the sums of the reduced parts round. The angle stays within ~1e-6
// rad for every position below 2^24, where pos * freq in plain F32 is off by 1e-2 rad at 10^5
// and by radians at 10^7.
#include "common.glsl"
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer Pos { uint positions[]; };
layout(binding = 2) readonly buffer Turns { float turns_per_pos[]; };   // (hi, mid, lo) per pair
#include "rope.glsl"
layout(binding = 3) writeonly buffer Out { float o[]; };

// n = T * heads * (dh - half); offsets in elements.
layout(push_constant) uniform P {
    uint n; uint dh; uint half_rot; uint heads; uint x_off; uint pos_off; uint tab_off; uint o_off;
} p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
    uint per_row = p.dh - p.half_rot;
    uint row = i / per_row;
    uint j = i % per_row;
    uint base = row * p.dh;
    if (j >= p.half_rot) {
        uint d = j + p.half_rot;
        o[p.o_off + base + d] = x[p.x_off + base + d];
        return;
    }
    uint pos = positions[p.pos_off + row / p.heads];
    float angle = rope_angle(pos, p.tab_off + 3 * j);
    float c = cos(angle), s = sin(angle);
    float a = x[p.x_off + base + j];
    float b = x[p.x_off + base + j + p.half_rot];
    o[p.o_off + base + j] = a * c - b * s;
    o[p.o_off + base + j + p.half_rot] = b * c + a * s;
}
