#version 450
// Causal depthwise convolution over time with a carried state, one invocation per channel.
// Channel c sees the window [state[c, 0..S-1] | x[0..T-1, c]] (oldest first) and produces
// out[n, c] = sum_k window[n + k] * w[c, k] + b[c] for n = 0 .. T+S-K (optionally silu'ed);
// then state[c] = the last S samples of the window.
//! variant bias HAS_BIAS
//! variant bias_silu HAS_BIAS APPLY_SILU
//! variant nobias
//! variant nobias_silu APPLY_SILU
#include "common.glsl"
#include "activations.glsl"
layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer W { float w[]; };
#ifdef HAS_BIAS
layout(binding = 2) readonly buffer Bias { float b[]; };
#define N_IN 3
#else
#define N_IN 2
#endif
layout(binding = N_IN) buffer State { float state[]; };
layout(binding = N_IN + 1) writeonly buffer Out { float o[]; };

// Offsets in floats; x_rs = x's row stride (x may be a column slice of a wider activation).
layout(push_constant) uniform P {
    uint T; uint C; uint S; uint K;
    uint x_off; uint x_rs; uint w_off; uint b_off; uint state_off; uint o_off;
} p;

float window(uint c, uint j) {
    return j < p.S ? state[p.state_off + c * p.S + j] : x[p.x_off + (j - p.S) * p.x_rs + c];
}

void main() {
    uint c = GLOBAL_INDEX;
    if (c >= p.C) return;
#ifdef HAS_BIAS
    float bias = b[p.b_off + c];
#else
    float bias = 0.0;
#endif
    uint n_out = p.T + p.S - p.K + 1;
    for (uint n = 0; n < n_out; n++) {
        float acc = 0.0;
        for (uint k = 0; k < p.K; k++)
            acc += window(c, n + k) * w[p.w_off + c * p.K + k];
        acc += bias;
#ifdef APPLY_SILU
        acc = silu(acc);
#endif
        o[p.o_off + n * p.C + c] = acc;
    }
    // New state = window[T .. T+S-1]. Writing in increasing j reads state[T + j] (T >= 1)
    // before anything at that index is overwritten.
    for (uint j = 0; j < p.S; j++)
        state[p.state_off + c * p.S + j] = window(c, p.T + j);
}
