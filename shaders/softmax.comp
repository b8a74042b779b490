#version 450
// Softmax over the rows of a contiguous [rows, cols] matrix, one work group per row, in F32:
// each invocation keeps a running (max, sum of exp(x - max)) over its columns, the work group
// merges them, then o = exp(x - max) / sum. o may be x itself: each invocation writes only the
// elements it read.
#include "common.glsl"
#define WG 64
#define NEG_BIG -3.0e38
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Out { float o[]; };

// Offsets in floats.
layout(push_constant) uniform P { uint rows; uint cols; uint x_off; uint o_off; } p;

shared float part_max[WG];
shared float part_sum[WG];

void main() {
    uint row = group_index();
    if (row >= p.rows) return;          // uniform over the work group: the grid may overshoot
    uint t = gl_LocalInvocationID.x;
    uint xrow = p.x_off + row * p.cols;

    float m = NEG_BIG, s = 0.0;
    for (uint c = t; c < p.cols; c += WG) {
        float v = x[xrow + c];
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    part_max[t] = m;
    part_sum[t] = s;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) {
            float m2 = part_max[t + half_], m1 = part_max[t];
            float mm = max(m1, m2);
            part_sum[t] = part_sum[t] * exp(m1 - mm) + part_sum[t + half_] * exp(m2 - mm);
            part_max[t] = mm;
        }
        barrier();
    }
    float row_max = part_max[0];
    float inv_sum = 1.0 / part_sum[0];

    uint orow = p.o_off + row * p.cols;
    for (uint c = t; c < p.cols; c += WG) o[orow + c] = exp(x[xrow + c] - row_max) * inv_sum;
}
