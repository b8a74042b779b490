#version 450
// ZAYA1 CCA (zaya1.md §3.2 steps 2 and 4): add the q/k "means" of the raw projections to the
// convolution output and split the q||k stream into q and k. Per token, c = raw q||k and y =
// conv(c), both [n_qk] with q heads first (H * dh) then k heads (Hkv * dh); query head h belongs
// to kv head h / per_kv.
//   q[h]  = y_q[h] + (c_q[h] + c_k[h / per_kv]) / 2
//   k[j]  = y_k[j] + (mean_g c_q[j * per_kv + g] + c_k[j]) / 2
// One invocation per output element.
//! variant qk_mean
#include "common.glsl"
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer C { float c[]; };
layout(binding = 1) readonly buffer Y { float y[]; };
layout(binding = 2) writeonly buffer Q { float q[]; };
layout(binding = 3) writeonly buffer K { float k[]; };

// n = T * n_qk; q_width = H * dh; offsets in floats.
layout(push_constant) uniform P {
    uint n; uint n_qk; uint q_width; uint dh; uint per_kv;
    uint c_off; uint y_off; uint q_off; uint k_off;
} p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
    uint t = i / p.n_qk, ch = i % p.n_qk;
    uint row = p.c_off + t * p.n_qk;
    uint d = ch % p.dh;
    float conv = y[p.y_off + t * p.n_qk + ch];
    if (ch < p.q_width) {
        uint kv = ch / p.dh / p.per_kv;
        float mean = 0.5 * (c[row + ch] + c[row + p.q_width + kv * p.dh + d]);
        q[p.q_off + t * p.q_width + ch] = conv + mean;
    } else {
        uint kv = (ch - p.q_width) / p.dh;
        float q_sum = 0.0;
        for (uint g = 0; g < p.per_kv; g++) q_sum += c[row + (kv * p.per_kv + g) * p.dh + d];
        float mean = 0.5 * (q_sum / float(p.per_kv) + c[row + ch]);
        uint k_width = p.n_qk - p.q_width;
        k[p.k_off + t * k_width + ch - p.q_width] = conv + mean;
    }
}
