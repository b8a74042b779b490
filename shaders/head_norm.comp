#version 450
// L2 head norm over x [rows = T*H, dh], one work group per head vector:
// o = x * scale / max(||x||, eps), times head_scale[row % heads] in the `head_scale` variant.
// o may be x itself: each invocation writes only the elements it read.
//! variant plain
//! variant head_scale HAS_HEAD_SCALE
#include "common.glsl"
#define WG 64
layout(local_size_x = WG) in;

#ifdef HAS_HEAD_SCALE
#define N_IN 2
#else
#define N_IN 1
#endif

layout(binding = 0) readonly buffer X { float x[]; };
#ifdef HAS_HEAD_SCALE
layout(binding = 1) readonly buffer S { float head_scale[]; };
#endif
layout(binding = N_IN) writeonly buffer Out { float o[]; };

// Offsets in floats.
layout(push_constant) uniform P {
    uint rows; uint dh; uint heads; uint x_off; uint s_off; uint o_off; float scale; float eps;
} p;

shared float partial[WG];

void main() {
    uint row = group_index();
    if (row >= p.rows) return;          // uniform over the work group: the grid may overshoot
    uint t = gl_LocalInvocationID.x;
    uint xrow = p.x_off + row * p.dh;

    float sum = 0.0;
    for (uint c = t; c < p.dh; c += WG) {
        float v = x[xrow + c];
        sum += v * v;
    }
    partial[t] = sum;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) partial[t] += partial[t + half_];
        barrier();
    }
    float factor = p.scale / max(sqrt(partial[0]), p.eps);
#ifdef HAS_HEAD_SCALE
    factor *= head_scale[p.s_off + row % p.heads];
#endif

    uint orow = p.o_off + row * p.dh;
    for (uint c = t; c < p.dh; c += WG) o[orow + c] = x[xrow + c] * factor;
}
