#version 450
// Mamba-1 selective scan: one invocation per channel c, sequential over the T tokens, the
// channel's N = d_state states held in registers (N is specialization constant 0). Per token:
//   s[n] = s[n] * exp(dt * A[c, n]) + B[t, n] * x * dt;   y = sum_n s[n] * C[t, n] + D[c] * x
// and, in the gate variant, y *= silu(z[t, c]).
//! variant plain
//! variant gate HAS_GATE
#include "common.glsl"
#include "activations.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint N = 16;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer Dt { float dt[]; };
layout(binding = 2) readonly buffer A_ { float A[]; };
layout(binding = 3) readonly buffer B_ { float B[]; };
layout(binding = 4) readonly buffer C_ { float C[]; };
layout(binding = 5) readonly buffer D_ { float D[]; };
#ifdef HAS_GATE
layout(binding = 6) readonly buffer Z { float z[]; };
#define N_IN 7
#else
#define N_IN 6
#endif
layout(binding = N_IN) buffer State { float state[]; };
layout(binding = N_IN + 1) writeonly buffer Out { float y_out[]; };

// Offsets in floats; *_rs = row strides of the token-major inputs (they may be column slices).
layout(push_constant) uniform P {
    uint T; uint Dn;
    uint x_off; uint x_rs; uint dt_off; uint dt_rs; uint A_off;
    uint B_off; uint B_rs; uint C_off; uint C_rs; uint D_off;
    uint z_off; uint z_rs; uint state_off; uint o_off;
} p;

void main() {
    uint c = GLOBAL_INDEX;
    if (c >= p.Dn) return;
    float s[N];
    float a[N];
    [[unroll]] for (uint n = 0; n < N; n++) {
        s[n] = state[p.state_off + c * N + n];
        a[n] = A[p.A_off + c * N + n];
    }
    float d = D[p.D_off + c];
    for (uint t = 0; t < p.T; t++) {
        float xv = x[p.x_off + t * p.x_rs + c];
        float dtv = dt[p.dt_off + t * p.dt_rs + c];
        float dx = xv * dtv;
        float y = 0.0;
        [[unroll]] for (uint n = 0; n < N; n++) {
            s[n] = s[n] * exp(dtv * a[n]) + B[p.B_off + t * p.B_rs + n] * dx;
            y += s[n] * C[p.C_off + t * p.C_rs + n];
        }
        y += d * xv;
#ifdef HAS_GATE
        y *= silu(z[p.z_off + t * p.z_rs + c]);
#endif
        y_out[p.o_off + t * p.Dn + c] = y;
    }
    [[unroll]] for (uint n = 0; n < N; n++)
        state[p.state_off + c * N + n] = s[n];
}
