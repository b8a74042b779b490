#version 450
// Causal depthwise convolution over time with a carried state, one invocation per channel and
// sequence (gl_WorkGroupID.z: sequence q owns rows q*T .. q*T+T-1 of x, and its slot's state).
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
layout(binding = N_IN) readonly buffer Slots { uint slots[]; };
layout(binding = N_IN + 1) buffer State { float state[]; };
layout(binding = N_IN + 2) writeonly buffer Out { float o[]; };

// Offsets in floats; x_rs = x's row stride (x may be a column slice of a wider activation).
// T is the tokens of one sequence; sequence q's slot is slots[slots_off + q * slots_step].
layout(push_constant) uniform P {
    uint T; uint C; uint S; uint K;
    uint x_off; uint x_rs; uint w_off; uint b_off; uint state_off; uint o_off;
    uint slots_off; uint slots_step; uint slot_lo; uint n_slots;
} p;

// Mamba's shape, S = K - 1 with K <= MAX_TAPS: the host sets TAPS = K and the window slides
// through registers, each sample read once (on llvmpipe every load is a loop over the lanes).
// TAPS = 0: the general loop below.
#define MAX_TAPS 4
layout(constant_id = 0) const uint TAPS = 0;

uint x_base, state_base, o_base;    // this sequence's rows and its slot's state

float window(uint c, uint j) {
    return j < p.S ? state[state_base + c * p.S + j] : x[x_base + (j - p.S) * p.x_rs + c];
}

void main() {
    uint c = GLOBAL_INDEX;
    uint seq = gl_WorkGroupID.z;
    uint slot = slot_in_part(slots[p.slots_off + seq * p.slots_step], p.slot_lo, p.n_slots);
    if (c >= p.C || slot == NO_SLOT) return;
    uint n_out = p.T + p.S - p.K + 1;
    x_base = p.x_off + seq * p.T * p.x_rs;
    state_base = p.state_off + slot * p.C * p.S;
    o_base = p.o_off + seq * n_out * p.C;
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
            win[k] = state[state_base + c * (TAPS - 1) + k];
        for (uint n = 0; n < p.T; n++) {
            win[TAPS - 1] = x[x_base + n * p.x_rs + c];
            float acc = 0.0;
            [[unroll]] for (uint k = 0; k < TAPS; k++)
                acc += win[k] * wk[k];
            acc += bias;
#ifdef APPLY_SILU
            acc = silu(acc);
#endif
            o[o_base + n * p.C + c] = acc;
            [[unroll]] for (uint k = 0; k + 1 < TAPS; k++)
                win[k] = win[k + 1];
        }
        [[unroll]] for (uint k = 0; k + 1 < TAPS; k++)
            state[state_base + c * (TAPS - 1) + k] = win[k];
        return;
    }
    for (uint n = 0; n < n_out; n++) {
        float acc = 0.0;
        for (uint k = 0; k < p.K; k++)
            acc += window(c, n + k) * w[p.w_off + c * p.K + k];
        acc += bias;
#ifdef APPLY_SILU
        acc = silu(acc);
#endif
        o[o_base + n * p.C + c] = acc;
    }
    // New state = window[T .. T+S-1]. Writing in increasing j reads state[T + j] (T >= 1)
    // before anything at that index is overwritten.
    for (uint j = 0; j < p.S; j++)
        state[state_base + c * p.S + j] = window(c, p.T + j);
}
