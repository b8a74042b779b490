#version 450
// ZAYA's MoE router after its down projection (zaya1.md §3.3 steps 1-6), one work group per token
// row, everything in shared memory: r = r_in + b_in (+ r_prev * eda, the EDA state of the
// previous MoE block); z = rms_norm(r) * nw; z = gelu(W1 z + b1); z = gelu(W2 z + b2);
// probs = softmax(W4 z); id = argmax(probs + biases) (ties to the lower slot). W1 [R, R],
// W2 [R, R] and W4 [E + 1, R] are stacked in that order in one weight (binding 0) of the type
// this variant decodes (shaders/include/weights.glsl). r is written where r_in is (in place).
//! variant f32 WTYPE_F32
//! variant f16 WTYPE_F16
//! variant bf16 WTYPE_BF16
//! variant q4_0 WTYPE_Q4_0
//! variant q4_1 WTYPE_Q4_1
//! variant q5_0 WTYPE_Q5_0
//! variant q5_1 WTYPE_Q5_1
//! variant q8_0 WTYPE_Q8_0
//! variant q2_k WTYPE_Q2_K
//! variant q3_k WTYPE_Q3_K
//! variant q4_k WTYPE_Q4_K
//! variant q5_k WTYPE_Q5_K
//! variant q6_k WTYPE_Q6_K
#include "common.glsl"
#include "activations.glsl"
#define W_BINDING 0
#include "weights.glsl"
#define WG 64
#define MAX_R 1024                      // router width and slot count the shared arrays hold
#define NEG_BIG -3.0e38
layout(local_size_x = WG) in;

layout(binding = 1) readonly buffer BIn { float b_in[]; };
layout(binding = 2) readonly buffer Prev { float r_prev[]; };
layout(binding = 3) readonly buffer Eda { float eda[]; };
layout(binding = 4) readonly buffer NW { float nw[]; };
layout(binding = 5) readonly buffer B1 { float b1[]; };
layout(binding = 6) readonly buffer B2 { float b2[]; };
layout(binding = 7) readonly buffer Biases { float biases[]; };
layout(binding = 8) buffer R { float r[]; };
layout(binding = 9) writeonly buffer Probs { float probs[]; };
layout(binding = 10) writeonly buffer Ids { uint ids[]; };

// n_slots = E + 1; offsets in elements (w_off: W1's first element in the weight buffer).
layout(push_constant) uniform P {
    uint rows; uint width; uint n_slots; uint has_eda; float eps; uint w_off;
    uint b_in_off; uint prev_off; uint eda_off; uint nw_off; uint b1_off; uint b2_off;
    uint biases_off; uint r_off; uint p_off; uint id_off;
} p;

shared float za[MAX_R];
shared float zb[MAX_R];
shared float partial[WG];

// Row j of the matrix starting at element e0 (rows of p.width) times src.
float dot_row(uint e0, uint j, bool from_a) {
    uint e = e0 + j * p.width;
    float acc = 0.0;
    for (uint k = 0; k < p.width; k += 4) {
        vec4 v = from_a ? vec4(za[k], za[k + 1], za[k + 2], za[k + 3])
                        : vec4(zb[k], zb[k + 1], zb[k + 2], zb[k + 3]);
        acc += dot(weight4(e + k), v);
    }
    return acc;
}

void main() {
    uint row = group_index();
    if (row >= p.rows) return;          // uniform over the work group: the grid may overshoot
    uint t = gl_LocalInvocationID.x;
    uint R = p.width, at = row * R;

    float sum = 0.0;
    for (uint c = t; c < R; c += WG) {
        float v = r[p.r_off + at + c] + b_in[p.b_in_off + c];
        if (p.has_eda != 0u) v += r_prev[p.prev_off + at + c] * eda[p.eda_off + c];
        r[p.r_off + at + c] = v;
        za[c] = v;
        sum += v * v;
    }
    partial[t] = sum;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) partial[t] += partial[t + half_];
        barrier();
    }
    float inv_rms = inversesqrt(partial[0] / float(R) + p.eps);
    for (uint c = t; c < R; c += WG) za[c] *= inv_rms * nw[p.nw_off + c];
    barrier();
    for (uint j = t; j < R; j += WG) zb[j] = gelu_erf(dot_row(p.w_off, j, true) + b1[p.b1_off + j]);
    barrier();
    for (uint j = t; j < R; j += WG) za[j] = gelu_erf(dot_row(p.w_off + R * R, j, false) + b2[p.b2_off + j]);
    barrier();
    for (uint j = t; j < p.n_slots; j += WG) zb[j] = dot_row(p.w_off + 2 * R * R, j, true);
    barrier();
    if (t == 0) {                       // E + 1 slots: a few, one invocation is enough
        float m = NEG_BIG;
        for (uint j = 0; j < p.n_slots; j++) m = max(m, zb[j]);
        float s = 0.0;
        for (uint j = 0; j < p.n_slots; j++) s += exp(zb[j] - m);
        float inv_sum = 1.0 / s, best = NEG_BIG;
        uint best_j = 0;
        for (uint j = 0; j < p.n_slots; j++) {
            float prob = exp(zb[j] - m) * inv_sum;
            probs[p.p_off + row * p.n_slots + j] = prob;
            float biased = prob + biases[p.biases_off + j];
            if (j == 0 || biased > best) {
                best = biased;
                best_j = j;
            }
        }
        ids[p.id_off + row] = best_j;
    }
}
