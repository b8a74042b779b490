#version 450
// ZAYA's MoE router after its down projection (zaya1.md §3.3 steps 1-6), one work group per TB
// token rows (which share each weight load: llvmpipe pays per load), everything in shared memory: r = r_in + b_in (+ r_prev * eda, the EDA state of the
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
#define TB 4                            // token rows per work group: a vec4 of each value
#define MAX_R 256                       // router width and slot count the shared arrays hold
                                        // (with TB: 9 KB, in Vulkan's 16 KB minimum)
#define MAX_R4 (MAX_R / 4)
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

shared vec4 za[TB * MAX_R4];            // row b's vector at za[b * MAX_R4 ..], 4 to an entry
shared vec4 zb[TB * MAX_R4];
shared vec4 partial[WG];

vec4 z4(bool from_a, uint i) { return from_a ? za[i] : zb[i]; }

// Row j of the matrix starting at element e0 (rows of p.width) times the n rows' vectors in za
// (from_a) or zb: component b is row b's product. Block types (rows of whole blocks) read 32
// raw quants at a time in wide loads, their scales once per HEAD_CHUNKS chunks, as the LANE
// matmuls do (weight4 would load the scales again for every 4); plain types 4 at a time.
vec4 dot_rows(uint e0, uint j, bool from_a, uint n) {
    uint e = e0 + j * p.width;
    vec4 acc = vec4(0.0);
#if WEIGHT_BLOCK > 1
    Head head;
    for (uint c = 0; c < p.width / 32; c++) {
        uint ec = e + 32 * c;
        if (c == 0 || (ec >> 5) % HEAD_CHUNKS == 0u)
            head = load_head(ec);
        vec4 q[8];
        vec4 s = chunk_quants(ec, head, q);
        [[unroll]] for (uint b = 0; b < TB; b++) {
            if (b < n) {
                uint at = b * MAX_R4 + 8 * c;
                vec4 lo = vec4(0.0), hi = vec4(0.0), x_lo = vec4(0.0), x_hi = vec4(0.0);
                [[unroll]] for (uint i = 0; i < 4; i++) {
                    vec4 x0 = z4(from_a, at + i), x1 = z4(from_a, at + 4 + i);
                    lo += q[i] * x0;
                    hi += q[4 + i] * x1;
                    x_lo += x0;
                    x_hi += x1;
                }
                acc[b] += s.x * hsum(lo) + s.y * hsum(hi) - (s.z * hsum(x_lo) + s.w * hsum(x_hi));
            }
        }
    }
#else
    for (uint k = 0; k < p.width / 4; k++) {
        vec4 w = weight4(e + 4 * k);
        [[unroll]] for (uint b = 0; b < TB; b++)
            if (b < n) acc[b] += dot(w, z4(from_a, b * MAX_R4 + k));
    }
#endif
    return acc;
}

void main() {
    uint row0 = group_index() * TB;
    if (row0 >= p.rows) return;         // uniform over the work group: the grid may overshoot
    uint n = min(TB, p.rows - row0);
    uint t = gl_LocalInvocationID.x;
    uint R = p.width;

    vec4 sum = vec4(0.0);
    for (uint c = t; c < R; c += WG) {
        [[unroll]] for (uint b = 0; b < TB; b++) {
            if (b < n) {
                uint at = (row0 + b) * R + c;
                float v = r[p.r_off + at] + b_in[p.b_in_off + c];
                if (p.has_eda != 0u) v += r_prev[p.prev_off + at] * eda[p.eda_off + c];
                r[p.r_off + at] = v;
                za[b * MAX_R4 + c / 4][c % 4] = v;
                sum[b] += v * v;
            }
        }
    }
    partial[t] = sum;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (t < half_) partial[t] += partial[t + half_];
        barrier();
    }
    vec4 inv_rms = inversesqrt(partial[0] / float(R) + p.eps);
    for (uint c = t; c < R; c += WG) {
        float w = nw[p.nw_off + c];
        [[unroll]] for (uint b = 0; b < TB; b++)
            if (b < n) za[b * MAX_R4 + c / 4][c % 4] *= inv_rms[b] * w;
    }
    barrier();
    for (uint j = t; j < R; j += WG) {
        vec4 y = dot_rows(p.w_off, j, true, n);
        float bias = b1[p.b1_off + j];
        [[unroll]] for (uint b = 0; b < TB; b++)
            if (b < n) zb[b * MAX_R4 + j / 4][j % 4] = gelu_erf(y[b] + bias);
    }
    barrier();
    for (uint j = t; j < R; j += WG) {
        vec4 y = dot_rows(p.w_off + R * R, j, false, n);
        float bias = b2[p.b2_off + j];
        [[unroll]] for (uint b = 0; b < TB; b++)
            if (b < n) za[b * MAX_R4 + j / 4][j % 4] = gelu_erf(y[b] + bias);
    }
    barrier();
    for (uint j = t; j < p.n_slots; j += WG) {
        vec4 y = dot_rows(p.w_off + 2 * R * R, j, true, n);
        [[unroll]] for (uint b = 0; b < TB; b++)
            if (b < n) zb[b * MAX_R4 + j / 4][j % 4] = y[b];
    }
    barrier();
    if (t < n) {                        // E + 1 slots: a few, one invocation per row is enough
        uint row = row0 + t, z0 = t * MAX_R4;
        float m = NEG_BIG;
        for (uint j = 0; j < p.n_slots; j++) m = max(m, zb[z0 + j / 4][j % 4]);
        float s = 0.0;
        for (uint j = 0; j < p.n_slots; j++) s += exp(zb[z0 + j / 4][j % 4] - m);
        float inv_sum = 1.0 / s, best = NEG_BIG;
        uint best_j = 0;
        for (uint j = 0; j < p.n_slots; j++) {
            float prob = exp(zb[z0 + j / 4][j % 4] - m) * inv_sum;
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
