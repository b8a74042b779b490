#version 450
// RMS norm over the rows of a contiguous [rows, cols] matrix, one work group per row:
// o = x / sqrt(mean(x^2) + eps) (* w, the per-column weight, in the `weight` variant).
// `gated` (Mamba-2's gated group norm): x is y [T, G * cols] seen as rows of G groups, first
// multiplied by silu(z) (z [T, G * cols], rows z_rs apart: a column slice), then normalised per
// group, and group g's columns take weight row g (w [G, cols]).
//! variant plain
//! variant weight HAS_WEIGHT
//! variant gated HAS_WEIGHT GATED
#include "common.glsl"
#include "activations.glsl"
#define WG 64          // small on purpose: lavapipe pays per invocation and per barrier
layout(local_size_x = WG) in;

#if defined(GATED)
#define N_IN 3
#elif defined(HAS_WEIGHT)
#define N_IN 2
#else
#define N_IN 1
#endif

layout(binding = 0) readonly buffer X { float x[]; };
#ifdef HAS_WEIGHT
layout(binding = 1) readonly buffer W { float w[]; };
#endif
#ifdef GATED
layout(binding = 2) readonly buffer Z { float z[]; };
#endif
layout(binding = N_IN) writeonly buffer Out { float o[]; };

// Offsets in floats. groups, z_off and z_rs only in `gated`.
layout(push_constant) uniform P {
    uint rows; uint cols; uint x_off; uint w_off; uint o_off; float eps;
    uint groups; uint z_off; uint z_rs;
} p;

float value(uint row, uint c) {
#ifdef GATED
    return x[p.x_off + row * p.cols + c] * silu(z[p.z_off + (row / p.groups) * p.z_rs + (row % p.groups) * p.cols + c]);
#else
    return x[p.x_off + row * p.cols + c];
#endif
}

shared float partial[WG];

void main() {
    uint row = group_index();
    if (row >= p.rows) return;          // uniform over the work group: the grid may overshoot
    uint t = gl_LocalInvocationID.x;

    float sum = 0.0;
    for (uint c = t; c < p.cols; c += WG) {
        float v = value(row, c);
        sum += v * v;
    }
    partial[t] = sum;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) partial[t] += partial[t + half_];
        barrier();
    }
    float inv_rms = inversesqrt(partial[0] / float(p.cols) + p.eps);

    uint orow = p.o_off + row * p.cols;
#ifdef GATED
    uint wrow = p.w_off + (row % p.groups) * p.cols;
#else
    uint wrow = p.w_off;
#endif
    for (uint c = t; c < p.cols; c += WG) {
#ifdef HAS_WEIGHT
        o[orow + c] = value(row, c) * inv_rms * w[wrow + c];
#else
        o[orow + c] = value(row, c) * inv_rms;
#endif
    }
}
