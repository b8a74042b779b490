#version 450
// RMS norm over the rows of a contiguous [rows, cols] matrix, one work group per row:
// o = x / sqrt(mean(x^2) + eps) (* w, the per-column weight, in the `weight` variant).
//! variant plain
//! variant weight HAS_WEIGHT
#include "common.glsl"
#define WG 64          // small on purpose: lavapipe pays per invocation and per barrier
layout(local_size_x = WG) in;

#ifdef HAS_WEIGHT
#define N_IN 2
#else
#define N_IN 1
#endif

layout(binding = 0) readonly buffer X { float x[]; };
#ifdef HAS_WEIGHT
layout(binding = 1) readonly buffer W { float w[]; };
#endif
layout(binding = N_IN) writeonly buffer Out { float o[]; };

// Offsets in floats.
layout(push_constant) uniform P { uint rows; uint cols; uint x_off; uint w_off; uint o_off; float eps; } p;

shared float partial[WG];

void main() {
    uint row = group_index();
    if (row >= p.rows) return;          // uniform over the work group: the grid may overshoot
    uint t = gl_LocalInvocationID.x;
    uint xrow = p.x_off + row * p.cols;

    float sum = 0.0;
    for (uint c = t; c < p.cols; c += WG) {
        float v = x[xrow + c];
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
    for (uint c = t; c < p.cols; c += WG) {
#ifdef HAS_WEIGHT
        o[orow + c] = x[xrow + c] * inv_rms * w[p.w_off + c];
#else
        o[orow + c] = x[xrow + c] * inv_rms;
#endif
    }
}
