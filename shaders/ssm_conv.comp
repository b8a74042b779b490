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

// Mamba's shape, S = K - 1 with K <= MAX_TAPS: the host sets TAPS = K and the window slides
// through registers, each sample read once (on llvmpipe every load is a loop over the lanes).
// TAPS = 0: the general loop below.
#define MAX_TAPS 4
layout(constant_id = 0) const uint TAPS = 0;

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
    if (TAPS > 0) {
        float wk[MAX_TAPS], win[MAX_TAPS];
        [[unroll]] for (uint k = 0; k < TAPS; k++)
            wk[k] = w[p.w_off + c * TAPS + k];
        [[unroll]] for (uint k = 0; k + 1 < TAPS; k++)
            win[k] = state[p.state_off + c * (TAPS - 1) + k];
        for (uint n = 0; n < p.T; n++) {
            win[TAPS - 1] = x[p.x_off + n * p.x_rs + c];
            float acc = 0.0;
            [[unroll]] for (uint k = 0; k < TAPS; k++)
                acc += win[k] * wk[k];
            acc += bias;
#ifdef APPLY_SILU
            acc = silu(acc);
#endif
            o[p.o_off + n * p.C + c] = acc;
            [[unroll]] for (uint k = 0; k + 1 < TAPS; k++)
                win[k] = win[k + 1];
        }
        [[unroll]] for (uint k = 0; k + 1 < TAPS; k++)
            state[p.state_off + c * (TAPS - 1) + k] = win[k];
        return;
    }
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
