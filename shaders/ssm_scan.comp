#version 450
// Mamba-1 selective scan: one invocation per channel c and sequence (gl_WorkGroupID.z: sequence
// q owns token rows q*T .. q*T+T-1 and its slot's state), sequential over the T tokens, the
// channel's N = d_state states held in registers (N is specialization constant 0). Per token:
//   s[n] = s[n] * exp(dt * A[c, n]) + B[t, n] * x * dt;   y = sum_n s[n] * C[t, n] + D[c] * x
// and, in the gate variant, y *= silu(z[t, c]). With DT_BIAS, dt = softplus(dt_in + bias[c])
// (Mamba's dt projection bias and activation, done here rather than in two more dispatches).
// WIDE (specialization constant 1; the host sets it when N and the offsets and row strides of
// A, B, C and the state are multiples of 4) reads those in vec4s: on llvmpipe every load is a
// loop over the SIMD lanes, so a quarter of the loads is most of the kernel's time.
// `heads` (Mamba-2): channel c belongs to head h = c / head_dim, which has a scalar A[h], D[h],
// dt[t, h] (+ dt_bias[h], softplus) and reads B and C of its group g = h / heads_per_group
// (columns g*N .. g*N+N-1); no gate (Mamba-2 gates in its norm).
// `dtproj_<type>` (Mamba-1) also takes the dt projection: dt_in = W_dt[c] . dt[t, 0..dt_rank-1]
// (dt then holds x_proj's dt_rank columns), W_dt [Dn, dt_rank] of the variant's weight type
// (shaders/include/weights.glsl; rows of whole blocks), before the bias and softplus.
// SHARE_LOADS (the `lane_` variants, for CPU devices; they need subgroup shuffles): B and C,
// and dt_proj's input, the same for every channel of a token, are loaded in parts by SHARE
// neighbours (shaders/include/share_loads.glsl). The host picks these only where B and C are
// uniform over the group.
//! variant plain
//! variant gate HAS_GATE
//! variant gate_dt HAS_GATE DT_BIAS
//! variant heads HEADS DT_BIAS
//! variant lane_heads HEADS DT_BIAS SHARE_LOADS
//! variant dtproj_f32 HAS_GATE DT_BIAS DT_PROJ WTYPE_F32
//! variant dtproj_f16 HAS_GATE DT_BIAS DT_PROJ WTYPE_F16
//! variant dtproj_bf16 HAS_GATE DT_BIAS DT_PROJ WTYPE_BF16
//! variant dtproj_q4_0 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q4_0
//! variant dtproj_q4_1 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q4_1
//! variant dtproj_q5_0 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q5_0
//! variant dtproj_q5_1 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q5_1
//! variant dtproj_q8_0 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q8_0
//! variant dtproj_q2_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q2_K
//! variant dtproj_q3_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q3_K
//! variant dtproj_q4_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q4_K
//! variant dtproj_q5_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q5_K
//! variant dtproj_q6_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q6_K
//! variant lane_dtproj_f32 HAS_GATE DT_BIAS DT_PROJ WTYPE_F32 SHARE_LOADS
//! variant lane_dtproj_f16 HAS_GATE DT_BIAS DT_PROJ WTYPE_F16 SHARE_LOADS
//! variant lane_dtproj_bf16 HAS_GATE DT_BIAS DT_PROJ WTYPE_BF16 SHARE_LOADS
//! variant lane_dtproj_q4_0 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q4_0 SHARE_LOADS
//! variant lane_dtproj_q4_1 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q4_1 SHARE_LOADS
//! variant lane_dtproj_q5_0 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q5_0 SHARE_LOADS
//! variant lane_dtproj_q5_1 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q5_1 SHARE_LOADS
//! variant lane_dtproj_q8_0 HAS_GATE DT_BIAS DT_PROJ WTYPE_Q8_0 SHARE_LOADS
//! variant lane_dtproj_q2_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q2_K SHARE_LOADS
//! variant lane_dtproj_q3_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q3_K SHARE_LOADS
//! variant lane_dtproj_q4_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q4_K SHARE_LOADS
//! variant lane_dtproj_q5_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q5_K SHARE_LOADS
//! variant lane_dtproj_q6_k HAS_GATE DT_BIAS DT_PROJ WTYPE_Q6_K SHARE_LOADS
#include "common.glsl"
#include "activations.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint N = 16;
layout(constant_id = 1) const bool WIDE = false;
// Every row of W_dt starts on a multiple of 4 elements (the host sets it): each 4 weights in one
// load. A per-row test would not do: llvmpipe runs both sides of a select.
layout(constant_id = 3) const bool DT_ALIGNED = false;
#define N4 ((N + 3) / 4)
#ifdef SHARE_LOADS
#include "share_loads.glsl"
// These variants (CPU devices, which have shaderInt64) read and write their vec4s as u64vec2s,
// two components instead of four (wide_loads.glsl); so does dt_proj's weight (weights.glsl).
#define WIDE64
#include "wide_loads.glsl"
#define VEC4_WORDS u64vec2
#define AS_VEC4(v) float_quad(v)
#define TO_WORDS(v) wide_of(v)
#else
#define VEC4_WORDS vec4
#define AS_VEC4(v) (v)
#define TO_WORDS(v) (v)
const uint SHARE = 1;
#define SHARE_ID 0u
vec4 from_lane(vec4 mine, uint i) { return mine; }
#endif
#define BC_LOADS ((2 * N4 + SHARE - 1) / SHARE)   // vec4s of B and C each invocation loads

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer Dt { float dt[]; };
layout(binding = 1) readonly buffer Dt4 { VEC4_WORDS dt4[]; };
layout(binding = 2) readonly buffer A_ { float A[]; };
layout(binding = 2) readonly buffer A4_ { VEC4_WORDS A4[]; };
layout(binding = 3) readonly buffer B_ { float B[]; };
layout(binding = 3) readonly buffer B4_ { VEC4_WORDS B4[]; };
layout(binding = 4) readonly buffer C_ { float C[]; };
layout(binding = 4) readonly buffer C4_ { VEC4_WORDS C4[]; };
layout(binding = 5) readonly buffer D_ { float D[]; };
#ifdef HAS_GATE
layout(binding = 6) readonly buffer Z { float z[]; };
#define GATE_IN 1
#else
#define GATE_IN 0
#endif
#ifdef DT_BIAS
layout(binding = 6 + GATE_IN) readonly buffer DtBias { float dt_bias[]; };
#define BIAS_IN 1
#else
#define BIAS_IN 0
#endif
#ifdef DT_PROJ
#define W_BINDING (6 + GATE_IN + BIAS_IN)
#include "weights.glsl"
#define N_IN (7 + GATE_IN + BIAS_IN)
#else
#define N_IN (6 + GATE_IN + BIAS_IN)
#endif
layout(binding = N_IN) readonly buffer Slots { uint slots[]; };
layout(binding = N_IN + 1) buffer State { float state[]; };
layout(binding = N_IN + 1) buffer State4 { VEC4_WORDS state4[]; };
layout(binding = N_IN + 2) writeonly buffer Out { float y_out[]; };

// Offsets in floats; *_rs = row strides of the token-major inputs (they may be column slices).
// T is the tokens of one sequence; sequence q's slot is slots[slots_off + q * slots_step].
layout(push_constant) uniform P {
    uint T; uint Dn;
    uint x_off; uint x_rs; uint dt_off; uint dt_rs; uint A_off;
    uint B_off; uint B_rs; uint C_off; uint C_rs; uint D_off;
    uint z_off; uint z_rs; uint state_off; uint o_off; uint bias_off;
    uint slots_off; uint slots_step; uint slot_lo; uint n_slots;
    uint head_dim; uint heads_per_group; uint dt_rank; uint w_off;
} p;

#ifdef HEADS
#define HEAD (c / p.head_dim)              // dt, A, D and dt_bias per head
#define GROUP_COL ((c / p.head_dim) / p.heads_per_group * N)
#else
#define HEAD c
#define GROUP_COL 0u
#endif

void main() {
    uint c = GLOBAL_INDEX;
    uint seq = gl_WorkGroupID.z;
    uint slot = slot_in_part(slots[p.slots_off + seq * p.slots_step], p.slot_lo, p.n_slots);
    if (c - gl_LocalInvocationID.x >= p.Dn || slot == NO_SLOT) return;   // uniform over the group
    // Channels past the end run (for the shuffles) on the last channel, and store nothing.
    bool live = c < p.Dn;
    c = min(c, p.Dn - 1);
    uint state_base = p.state_off + slot * p.Dn * N;
    uint row0 = seq * p.T;
    float s[N4 * 4];
    if (WIDE) {
        [[unroll]] for (uint i = 0; i < N4; i++) {
            vec4 s4 = AS_VEC4(state4[(state_base + c * N) / 4 + i]);
            [[unroll]] for (uint j = 0; j < 4; j++) s[4 * i + j] = s4[j];
        }
    } else {
        [[unroll]] for (uint n = 0; n < N; n++) s[n] = state[state_base + c * N + n];
    }
#ifdef HEADS
    float a_h = A[p.A_off + HEAD];
#define DECAY(n) decay
#else
    float a[N4 * 4];
    if (WIDE) {
        [[unroll]] for (uint i = 0; i < N4; i++) {
            vec4 a4 = AS_VEC4(A4[(p.A_off + c * N) / 4 + i]);
            [[unroll]] for (uint j = 0; j < 4; j++) a[4 * i + j] = a4[j];
        }
    } else {
        [[unroll]] for (uint n = 0; n < N; n++) a[n] = A[p.A_off + c * N + n];
    }
#define DECAY(n) exp(dtv * a[n])
#endif
    float d = D[p.D_off + HEAD];
#ifdef DT_BIAS
    float bias = dt_bias[p.bias_off + HEAD];
#endif
    uint bc_col = GROUP_COL;
    for (uint t = row0; t < row0 + p.T; t++) {
        float xv = x[p.x_off + t * p.x_rs + c];
#ifdef DT_PROJ
        float dtv = 0.0;
        uint w_at = p.w_off + c * p.dt_rank, dt_at = p.dt_off + t * p.dt_rs;
        uint r = 0;
        if (WIDE && dt_at % 4 == 0) {     // x_proj's row in vec4s too (see WIDE above), SHARE at a time
            for (; r + 4 <= p.dt_rank; r += 4 * SHARE) {
                uint mine_at = r + 4 * SHARE_ID;
                vec4 mine = mine_at + 4 <= p.dt_rank ? AS_VEC4(dt4[(dt_at + mine_at) / 4]) : vec4(0.0);
                [[unroll]] for (uint i = 0; i < SHARE; i++) {
                    vec4 dt_part = from_lane(mine, i);
                    if (r + 4 * i + 4 <= p.dt_rank)
                        dtv += dot(DT_ALIGNED ? weight4_aligned(w_at + r + 4 * i) : weight4(w_at + r + 4 * i), dt_part);
                }
            }
            r = p.dt_rank / 4 * 4;
        }
        for (; r + 4 <= p.dt_rank; r += 4)
            dtv += dot(weight4(w_at + r), vec4(dt[dt_at + r], dt[dt_at + r + 1], dt[dt_at + r + 2],
                                               dt[dt_at + r + 3]));
        for (; r < p.dt_rank; r++) dtv += weight1(w_at + r) * dt[dt_at + r];
#else
        float dtv = dt[p.dt_off + t * p.dt_rs + HEAD];
#endif
#ifdef DT_BIAS
        dtv = softplus(dtv + bias);
#endif
#ifdef HEADS
        float decay = exp(dtv * a_h);         // one exp per token: A is a scalar per head
#endif
        float dx = xv * dtv;
        float y = 0.0;
        uint b_at = p.B_off + t * p.B_rs + bc_col, c_at = p.C_off + t * p.C_rs + bc_col;
        if (WIDE) {
            vec4 bc_mine[BC_LOADS];          // vec4 i of B then C: invocation i % SHARE's i / SHARE
            [[unroll]] for (uint j = 0; j < BC_LOADS; j++) {
                uint i = j * SHARE + SHARE_ID;
                bc_mine[j] = i < N4 ? AS_VEC4(B4[b_at / 4 + i]) : i < 2 * N4 ? AS_VEC4(C4[c_at / 4 + i - N4]) : vec4(0.0);
            }
            [[unroll]] for (uint i = 0; i < N4; i++) {
                vec4 b4 = from_lane(bc_mine[i / SHARE], i % SHARE);
                vec4 c4 = from_lane(bc_mine[(N4 + i) / SHARE], (N4 + i) % SHARE);
                [[unroll]] for (uint j = 0; j < 4; j++) {
                    uint n = 4 * i + j;
                    s[n] = s[n] * DECAY(n) + b4[j] * dx;
                    y += s[n] * c4[j];
                }
            }
        } else {
            [[unroll]] for (uint n = 0; n < N; n++) {
                s[n] = s[n] * DECAY(n) + B[b_at + n] * dx;
                y += s[n] * C[c_at + n];
            }
        }
        y += d * xv;
#ifdef HAS_GATE
        y *= silu(z[p.z_off + t * p.z_rs + c]);
#endif
        if (live)
            y_out[p.o_off + t * p.Dn + c] = y;
    }
    if (!live)
        return;
    if (WIDE) {
        [[unroll]] for (uint i = 0; i < N4; i++)
            state4[(state_base + c * N) / 4 + i] = TO_WORDS(vec4(s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]));
    } else {
        [[unroll]] for (uint n = 0; n < N; n++)
            state[state_base + c * N + n] = s[n];
    }
}
