#version 450
// 1-D convolution over time on token-major F32 activations x [T_in, C_in], valid padding.
//   im2col:  cols[t, c*K + k] = x[t + k, c]                      (T_out = T_in - K + 1)
//   grouped: out[t, o] = b[o] + sum_{i_loc, k} w[o, i_loc, k] * x[t + k, g*cg_in + i_loc],
//            g = o / cg_out, w in PyTorch layout [C_out, C_in/groups, K]; one invocation per
//            output channel and tile of TOKENS tokens; K and TOKENS are specialization constants.
//            gl_WorkGroupID.z is the sequence: each has T_out + K - 1 input rows and T_out
//            output rows, one after the other (valid padding within each sequence).
//! variant im2col IM2COL
//! variant grouped_bias GROUPED HAS_BIAS
//! variant grouped_nobias GROUPED
#include "common.glsl"
layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer X { float x[]; };
#ifdef IM2COL
layout(binding = 1) writeonly buffer Out { float o[]; };
layout(push_constant) uniform P { uint n; uint C; uint K; uint x_off; uint o_off; } p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
    uint row = p.C * p.K;
    uint t = i / row;
    uint c = (i % row) / p.K;
    uint k = i % p.K;
    o[p.o_off + i] = x[p.x_off + (t + k) * p.C + c];
}
#else
layout(binding = 1) readonly buffer W { float w[]; };
#ifdef HAS_BIAS
layout(binding = 2) readonly buffer Bias { float b[]; };
#define N_IN 3
#else
#define N_IN 2
#endif
layout(binding = N_IN) writeonly buffer Out { float o[]; };
layout(constant_id = 0) const uint K = 2;
// Each invocation computes TOKENS consecutive outputs of one channel: every weight it loads
// serves TOKENS outputs and every input sample up to K of them.
layout(constant_id = 1) const uint TOKENS = 4;
layout(push_constant) uniform P {
    uint T_out; uint C_in; uint C_out; uint cg_in; uint cg_out;
    uint x_off; uint w_off; uint b_off; uint o_off;
} p;

void main() {
    uint i = GLOBAL_INDEX;
    uint t0 = (i / p.C_out) * TOKENS;
    uint o_ch = i % p.C_out;
    if (t0 >= p.T_out) return;
    uint seq = gl_WorkGroupID.z;
    uint n_rows = min(TOKENS, p.T_out - t0) + K - 1;     // input rows this invocation reads
    uint x_base = p.x_off + (seq * (p.T_out + K - 1) + t0) * p.C_in + (o_ch / p.cg_out) * p.cg_in;
    uint w_base = p.w_off + o_ch * p.cg_in * K;
    float acc[TOKENS];
    [[unroll]] for (uint j = 0; j < TOKENS; j++) acc[j] = 0.0;
    for (uint il = 0; il < p.cg_in; il++) {
        float wk[K];
        [[unroll]] for (uint k = 0; k < K; k++) wk[k] = w[w_base + il * K + k];
        float xs[TOKENS + K - 1];
        [[unroll]] for (uint r = 0; r < TOKENS + K - 1; r++)
            xs[r] = r < n_rows ? x[x_base + r * p.C_in + il] : 0.0;
        [[unroll]] for (uint j = 0; j < TOKENS; j++)
            [[unroll]] for (uint k = 0; k < K; k++) acc[j] += wk[k] * xs[j + k];
    }
#ifdef HAS_BIAS
    float bias = b[p.b_off + o_ch];
#else
    float bias = 0.0;
#endif
    for (uint j = 0; j < n_rows - (K - 1); j++)
        o[p.o_off + (seq * p.T_out + t0 + j) * p.C_out + o_ch] = acc[j] + bias;
}
#endif
