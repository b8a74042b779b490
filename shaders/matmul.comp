#version 450
// y[t, col0 + r] = sum_k W[r, k] * x[t, k] for one part (rows col0 .. col0 + rows) of a weight
// W[out, n_in] and tokens x[n_tokens, n_in]; y has row stride o_stride (the full out).
//   VEC: a team of LANES threads reduces each output row; a group does ROWS_PER_GROUP rows of
//        one token (decode, N = 1). With MATMUL_ID the token's expert comes from ids[] and
//        W holds experts e_start .. e_start + e_count, each [rows, n_in]; an id >= e_total
//        (the skip slot) gives a row of zeros, written by the part with e_start == 0.
//   MAT: tiles of TILE_ROWS rows x TILE_TOKENS tokens; each step decodes a TILE_ROWS x TILE_K
//        slice of W into shared memory once and uses every value for TILE_TOKENS tokens.
//        With MATMUL_ID (prompts) a group does one expert (ids and parts as in VEC) for the
//        tokens that chose it, TILE_TOKENS at a time, so each expert is read once per tile.
// NORM_IN (a specialization constant; not with MATMUL_ID) first RMS-norms each token, times the
// norm weight nw: W (x / rms(x) * nw) = (W (x * nw)) / rms(x), so x is multiplied by nw where it
// is read, the sum of its squares gathered in the same pass, and 1 / rms applied at the store.
//! variant vec_f32 VEC WTYPE_F32
//! variant vecsg_f32 VEC SUBGROUP_SUM WTYPE_F32
//! variant vecrow_f32 VEC ROW_PER_THREAD WTYPE_F32
//! variant vec_f16 VEC WTYPE_F16
//! variant vecsg_f16 VEC SUBGROUP_SUM WTYPE_F16
//! variant vecrow_f16 VEC ROW_PER_THREAD WTYPE_F16
//! variant vec_bf16 VEC WTYPE_BF16
//! variant vecsg_bf16 VEC SUBGROUP_SUM WTYPE_BF16
//! variant vecrow_bf16 VEC ROW_PER_THREAD WTYPE_BF16
//! variant id_f32 VEC MATMUL_ID WTYPE_F32
//! variant idsg_f32 VEC MATMUL_ID SUBGROUP_SUM WTYPE_F32
//! variant idrow_f32 VEC MATMUL_ID ROW_PER_THREAD WTYPE_F32
//! variant id_f16 VEC MATMUL_ID WTYPE_F16
//! variant idsg_f16 VEC MATMUL_ID SUBGROUP_SUM WTYPE_F16
//! variant idrow_f16 VEC MATMUL_ID ROW_PER_THREAD WTYPE_F16
//! variant id_bf16 VEC MATMUL_ID WTYPE_BF16
//! variant idsg_bf16 VEC MATMUL_ID SUBGROUP_SUM WTYPE_BF16
//! variant idrow_bf16 VEC MATMUL_ID ROW_PER_THREAD WTYPE_BF16
//! variant mat_f32 MAT WTYPE_F32
//! variant idmat_f32 MAT MATMUL_ID WTYPE_F32
//! variant mat_f16 MAT WTYPE_F16
//! variant idmat_f16 MAT MATMUL_ID WTYPE_F16
//! variant mat_bf16 MAT WTYPE_BF16
//! variant idmat_bf16 MAT MATMUL_ID WTYPE_BF16
//! variant vec_q4_0 VEC WTYPE_Q4_0
//! variant vecsg_q4_0 VEC SUBGROUP_SUM WTYPE_Q4_0
//! variant vecrow_q4_0 VEC ROW_PER_THREAD WTYPE_Q4_0
//! variant id_q4_0 VEC MATMUL_ID WTYPE_Q4_0
//! variant idsg_q4_0 VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q4_0
//! variant idrow_q4_0 VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q4_0
//! variant mat_q4_0 MAT WTYPE_Q4_0
//! variant idmat_q4_0 MAT MATMUL_ID WTYPE_Q4_0
//! variant vec_q4_1 VEC WTYPE_Q4_1
//! variant vecsg_q4_1 VEC SUBGROUP_SUM WTYPE_Q4_1
//! variant vecrow_q4_1 VEC ROW_PER_THREAD WTYPE_Q4_1
//! variant id_q4_1 VEC MATMUL_ID WTYPE_Q4_1
//! variant idsg_q4_1 VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q4_1
//! variant idrow_q4_1 VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q4_1
//! variant mat_q4_1 MAT WTYPE_Q4_1
//! variant idmat_q4_1 MAT MATMUL_ID WTYPE_Q4_1
//! variant vec_q5_0 VEC WTYPE_Q5_0
//! variant vecsg_q5_0 VEC SUBGROUP_SUM WTYPE_Q5_0
//! variant vecrow_q5_0 VEC ROW_PER_THREAD WTYPE_Q5_0
//! variant id_q5_0 VEC MATMUL_ID WTYPE_Q5_0
//! variant idsg_q5_0 VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q5_0
//! variant idrow_q5_0 VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q5_0
//! variant mat_q5_0 MAT WTYPE_Q5_0
//! variant idmat_q5_0 MAT MATMUL_ID WTYPE_Q5_0
//! variant vec_q5_1 VEC WTYPE_Q5_1
//! variant vecsg_q5_1 VEC SUBGROUP_SUM WTYPE_Q5_1
//! variant vecrow_q5_1 VEC ROW_PER_THREAD WTYPE_Q5_1
//! variant id_q5_1 VEC MATMUL_ID WTYPE_Q5_1
//! variant idsg_q5_1 VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q5_1
//! variant idrow_q5_1 VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q5_1
//! variant mat_q5_1 MAT WTYPE_Q5_1
//! variant idmat_q5_1 MAT MATMUL_ID WTYPE_Q5_1
//! variant vec_q8_0 VEC WTYPE_Q8_0
//! variant vecsg_q8_0 VEC SUBGROUP_SUM WTYPE_Q8_0
//! variant vecrow_q8_0 VEC ROW_PER_THREAD WTYPE_Q8_0
//! variant id_q8_0 VEC MATMUL_ID WTYPE_Q8_0
//! variant idsg_q8_0 VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q8_0
//! variant idrow_q8_0 VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q8_0
//! variant mat_q8_0 MAT WTYPE_Q8_0
//! variant idmat_q8_0 MAT MATMUL_ID WTYPE_Q8_0
//! variant vec_q2_k VEC WTYPE_Q2_K
//! variant vecsg_q2_k VEC SUBGROUP_SUM WTYPE_Q2_K
//! variant vecrow_q2_k VEC ROW_PER_THREAD WTYPE_Q2_K
//! variant id_q2_k VEC MATMUL_ID WTYPE_Q2_K
//! variant idsg_q2_k VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q2_K
//! variant idrow_q2_k VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q2_K
//! variant mat_q2_k MAT WTYPE_Q2_K
//! variant idmat_q2_k MAT MATMUL_ID WTYPE_Q2_K
//! variant vec_q3_k VEC WTYPE_Q3_K
//! variant vecsg_q3_k VEC SUBGROUP_SUM WTYPE_Q3_K
//! variant vecrow_q3_k VEC ROW_PER_THREAD WTYPE_Q3_K
//! variant id_q3_k VEC MATMUL_ID WTYPE_Q3_K
//! variant idsg_q3_k VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q3_K
//! variant idrow_q3_k VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q3_K
//! variant mat_q3_k MAT WTYPE_Q3_K
//! variant idmat_q3_k MAT MATMUL_ID WTYPE_Q3_K
//! variant vec_q4_k VEC WTYPE_Q4_K
//! variant vecsg_q4_k VEC SUBGROUP_SUM WTYPE_Q4_K
//! variant vecrow_q4_k VEC ROW_PER_THREAD WTYPE_Q4_K
//! variant id_q4_k VEC MATMUL_ID WTYPE_Q4_K
//! variant idsg_q4_k VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q4_K
//! variant idrow_q4_k VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q4_K
//! variant mat_q4_k MAT WTYPE_Q4_K
//! variant idmat_q4_k MAT MATMUL_ID WTYPE_Q4_K
//! variant vec_q5_k VEC WTYPE_Q5_K
//! variant vecsg_q5_k VEC SUBGROUP_SUM WTYPE_Q5_K
//! variant vecrow_q5_k VEC ROW_PER_THREAD WTYPE_Q5_K
//! variant id_q5_k VEC MATMUL_ID WTYPE_Q5_K
//! variant idsg_q5_k VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q5_K
//! variant idrow_q5_k VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q5_K
//! variant mat_q5_k MAT WTYPE_Q5_K
//! variant idmat_q5_k MAT MATMUL_ID WTYPE_Q5_K
//! variant vec_q6_k VEC WTYPE_Q6_K
//! variant vecsg_q6_k VEC SUBGROUP_SUM WTYPE_Q6_K
//! variant vecrow_q6_k VEC ROW_PER_THREAD WTYPE_Q6_K
//! variant id_q6_k VEC MATMUL_ID WTYPE_Q6_K
//! variant idsg_q6_k VEC MATMUL_ID SUBGROUP_SUM WTYPE_Q6_K
//! variant idrow_q6_k VEC MATMUL_ID ROW_PER_THREAD WTYPE_Q6_K
//! variant mat_q6_k MAT WTYPE_Q6_K
//! variant idmat_q6_k MAT MATMUL_ID WTYPE_Q6_K
//! variant lane_f32 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_F32
//! variant lanemat_f32 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_F32
//! variant idlanemat4_f32 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_F32
//! variant idlanemat8_f32 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_F32
//! variant idlane_f32 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_F32
//! variant lane_f16 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_F16
//! variant lanemat_f16 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_F16
//! variant idlanemat4_f16 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_F16
//! variant idlanemat8_f16 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_F16
//! variant idlane_f16 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_F16
//! variant lane_bf16 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_BF16
//! variant idlane_bf16 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_BF16
//! variant lane_q4_0 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q4_0
//! variant lanemat_q4_0 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q4_0
//! variant idlanemat4_q4_0 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q4_0
//! variant idlanemat8_q4_0 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q4_0
//! variant idlane_q4_0 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q4_0
//! variant lane_q4_1 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q4_1
//! variant lanemat_q4_1 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q4_1
//! variant idlanemat4_q4_1 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q4_1
//! variant idlanemat8_q4_1 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q4_1
//! variant idlane_q4_1 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q4_1
//! variant lane_q5_0 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q5_0
//! variant lanemat_q5_0 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q5_0
//! variant idlanemat4_q5_0 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q5_0
//! variant idlanemat8_q5_0 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q5_0
//! variant idlane_q5_0 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q5_0
//! variant lane_q5_1 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q5_1
//! variant lanemat_q5_1 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q5_1
//! variant idlanemat4_q5_1 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q5_1
//! variant idlanemat8_q5_1 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q5_1
//! variant idlane_q5_1 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q5_1
//! variant lane_q8_0 LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q8_0
//! variant lanemat_q8_0 LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q8_0
//! variant idlanemat4_q8_0 LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q8_0
//! variant idlanemat8_q8_0 LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q8_0
//! variant idlane_q8_0 LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q8_0
//! variant lane_q2_k LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q2_K
//! variant lanemat_q2_k LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q2_K
//! variant idlanemat4_q2_k LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q2_K
//! variant idlanemat8_q2_k LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q2_K
//! variant idlane_q2_k LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q2_K
//! variant lane_q3_k LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q3_K
//! variant lanemat_q3_k LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q3_K
//! variant idlanemat4_q3_k LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q3_K
//! variant idlanemat8_q3_k LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q3_K
//! variant idlane_q3_k LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q3_K
//! variant lane_q4_k LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q4_K
//! variant lanemat_q4_k LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q4_K
//! variant idlanemat4_q4_k LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q4_K
//! variant idlanemat8_q4_k LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q4_K
//! variant idlane_q4_k LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q4_K
//! variant lane_q5_k LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q5_K
//! variant lanemat_q5_k LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q5_K
//! variant idlanemat4_q5_k LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q5_K
//! variant idlanemat8_q5_k LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q5_K
//! variant idlane_q5_k LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q5_K
//! variant lane_q6_k LANE LANE_ROWS=8 LANE_TOKENS=1 WTYPE_Q6_K
//! variant lanemat_q6_k LANE LANE_ROWS=16 LANE_TOKENS=8 WTYPE_Q6_K
//! variant idlanemat4_q6_k LANE LANE_ROWS=16 LANE_TOKENS=4 MATMUL_ID EXPERT_TILES WTYPE_Q6_K
//! variant idlanemat8_q6_k LANE LANE_ROWS=16 LANE_TOKENS=8 MATMUL_ID EXPERT_TILES WTYPE_Q6_K
//! variant idlane_q6_k LANE LANE_ROWS=8 LANE_TOKENS=1 MATMUL_ID WTYPE_Q6_K
#include "common.glsl"
#ifdef LANE
#define WIDE64
// 1 when every row of the weight starts a span of 256 elements (ops/matmul.py): each row's
// scales serve a span of chunks (HEAD_CHUNKS), and plain types read a chunk in 32-byte loads.
layout(constant_id = 3) const uint HEADS_ALIGNED = 0u;
#define CHUNKS_ALIGNED (HEADS_ALIGNED != 0u)
#endif
#include "weights.glsl"

#ifdef LANE
// x and the norm weight in 16-byte units (wide_loads.glsl); x_off, nw_off and n_in multiples of 4.
layout(binding = 1) readonly buffer X { u64vec2 x_wide[]; };
vec4 x_quad(uint i) { return uintBitsToFloat(quad_of(x_wide[i])); }
#else
layout(binding = 1) readonly buffer X { float x[]; };
#endif
#ifdef MATMUL_ID
layout(binding = 2) readonly buffer Ids { uint ids[]; };
#elif defined(LANE)
layout(binding = 2) readonly buffer Nw { u64vec2 nw_wide[]; };     // x again when NORM_IN is off
#else
layout(binding = 2) readonly buffer Nw { float nw[]; };
#endif
layout(binding = 3) buffer Y { float y[]; };

// Offsets count elements of each buffer's type.
layout(push_constant) uniform P {
    uint w_off; uint rows; uint n_in; uint x_off; uint n_tokens; uint o_off; uint o_stride; uint col0;
    uint accumulate;
#ifdef MATMUL_ID
    uint ids_off; uint e_start; uint e_count; uint e_total;
#else
    uint nw_off; float eps;
#endif
} p;

// The norm weight at input columns k.. and each token's 1 / rms from its sum of squares.
#ifdef MATMUL_ID
const uint NORM_IN = 0u;              // no norm weight: these never run
vec4 nw4(uint k) { return vec4(1.0); }
float nw1(uint k) { return 1.0; }
float inv_rms(float ss) { return 1.0; }
#else
layout(constant_id = 1) const uint NORM_IN = 0u;
#ifdef LANE
vec4 nw4(uint k) { return uintBitsToFloat(quad_of(nw_wide[(p.nw_off + k) >> 2])); }
float nw1(uint k) { return nw4(k & ~3u)[(p.nw_off + k) & 3u]; }
#else
vec4 nw4(uint k) { uint i = p.nw_off + k; return vec4(nw[i], nw[i + 1], nw[i + 2], nw[i + 3]); }
float nw1(uint k) { return nw[p.nw_off + k]; }
#endif
float inv_rms(float ss) { return inversesqrt(ss / float(p.n_in) + p.eps); }
#endif

// x values as the product reads them: with NORM_IN times the norm weight w, and their squares
// added to the token's sum ss.
vec4 norm_in(vec4 v, vec4 w, inout float ss) {
    if (NORM_IN == 0u)
        return v;
    ss += dot(v, v);
    return v * w;
}
float norm_in(float v, float w, inout float ss) {
    if (NORM_IN == 0u)
        return v;
    ss += v * v;
    return v * w;
}

// A result, with NORM_IN times its token's 1 / rms (ss: the token's sum of squares), or with
// `accumulate` (not for MATMUL_ID) added to what y holds: y += W x.
void store(uint i, float v, float ss) {
    if (NORM_IN != 0u)
        v *= inv_rms(ss);
    y[i] = p.accumulate != 0u ? y[i] + v : v;
}

#ifndef LANE
vec4 x4(uint i) { return vec4(x[i], x[i + 1], x[i + 2], x[i + 3]); }
#endif

#ifdef VEC
// One row's dot product is shared by a team of lanes, each taking 32-element chunks in turn
// (a chunk is one legacy block or one K-quant sub-block, so its scales are read once per
// chunk). With SUBGROUP_SUM a team is a subgroup, of whatever size the device runs, summed with
// subgroupAdd; otherwise a team is LANES threads summed in shared memory.
#define CHUNK 32u
#if defined(ROW_PER_THREAD)
// Short rows (the host picks this for n_in <= 256): one thread per row, no reduction.
#define ROWS_PER_GROUP 64
layout(local_size_x = ROWS_PER_GROUP) in;
#elif defined(SUBGROUP_SUM)
#extension GL_KHR_shader_subgroup_arithmetic : require
// Rows per group: the host sets it to the group's expected number of subgroups; the loop over
// rows below is right for any subgroup size the device actually runs.
layout(constant_id = 0) const uint ROWS_PER_GROUP = 4;
layout(local_size_x = 64) in;
#else
#define ROWS_PER_GROUP 4
#define LANES 32
layout(local_size_x = LANES * ROWS_PER_GROUP) in;
shared vec2 partial[LANES * ROWS_PER_GROUP];     // (dot product, sum of squares)
#endif

// This lane's share of a row's dot product with x, and with NORM_IN of x's sum of squares (ss).
float row_dot(uint w_row, uint x_row, uint lane, uint n_lanes, inout float ss) {
    uint n_chunks = p.n_in / CHUNK;
#if WEIGHT_BLOCK > 1
    // Block types: a chunk's raw quants times x, its scales and offsets once per half chunk.
    float sum = 0.0;
    for (uint c = lane; c < n_chunks; c += n_lanes) {
        uint k = c * CHUNK;
        vec4 q[8];
        vec4 s = weight_chunk(w_row + k, q);
        vec4 dot_h[2] = vec4[2](vec4(0.0), vec4(0.0)), x_h[2] = vec4[2](vec4(0.0), vec4(0.0));
        [[unroll]] for (uint i = 0; i < 8; i++) {
            vec4 xv = norm_in(x4(x_row + k + 4 * i), nw4(k + 4 * i), ss);
            dot_h[i / 4] += q[i] * xv;
            x_h[i / 4] += xv;
        }
        sum += s.x * hsum(dot_h[0]) + s.y * hsum(dot_h[1]) - (s.z * hsum(x_h[0]) + s.w * hsum(x_h[1]));
    }
    return sum;
#else
    vec4 acc = vec4(0.0);
    for (uint c = lane; c < n_chunks; c += n_lanes) {
        uint k = c * CHUNK;
        [[unroll]] for (uint j = 0; j < CHUNK; j += 4)
            acc += weight4(w_row + k + j) * norm_in(x4(x_row + k + j), nw4(k + j), ss);
    }
    float sum = hsum(acc);
    for (uint k = n_chunks * CHUNK + lane; k < p.n_in; k += n_lanes)   // plain types only
        sum += weight1(w_row + k) * norm_in(x[x_row + k], nw1(k), ss);
    return sum;
#endif
}

void main() {
    uint row_groups = (p.rows + ROWS_PER_GROUP - 1) / ROWS_PER_GROUP;
    uint g = group_index();
    uint token = g / row_groups;
    if (token >= p.n_tokens)
        return;                       // the grid may round up; uniform over the group
    uint first_row = (g % row_groups) * ROWS_PER_GROUP;
    uint out_base = p.o_off + token * p.o_stride + p.col0;
    uint w_base = p.w_off;
#ifdef MATMUL_ID
    uint expert = ids[p.ids_off + token];
    if (expert >= p.e_total) {
        uint r = first_row + gl_LocalInvocationID.x;
        if (p.e_start == 0 && gl_LocalInvocationID.x < ROWS_PER_GROUP && r < p.rows)
            y[out_base + r] = 0.0;
        return;
    }
    if (expert < p.e_start || expert >= p.e_start + p.e_count)
        return;                       // another part holds this expert
    w_base += (expert - p.e_start) * p.rows * p.n_in;
#endif
    uint x_row = p.x_off + token * p.n_in;
#if defined(ROW_PER_THREAD)
    uint row = first_row + gl_LocalInvocationID.x;
    if (row < p.rows) {
        float ss = 0.0;
        float sum = row_dot(w_base + row * p.n_in, x_row, 0u, 1u, ss);
        store(out_base + row, sum, ss);
    }
#elif defined(SUBGROUP_SUM)
    for (uint r = gl_SubgroupID; r < ROWS_PER_GROUP; r += gl_NumSubgroups) {
        uint row = first_row + r;
        if (row >= p.rows)
            break;                    // uniform over the subgroup
        float ss = 0.0;
        float sum = subgroupAdd(row_dot(w_base + row * p.n_in, x_row, gl_SubgroupInvocationID,
                                        gl_SubgroupSize, ss));
        if (NORM_IN != 0u)
            ss = subgroupAdd(ss);
        if (subgroupElect())
            store(out_base + row, sum, ss);
    }
#else
    uint tid = gl_LocalInvocationID.x;
    uint lane = tid % LANES;
    uint row = first_row + tid / LANES;
    float ss = 0.0;
    float sum = row < p.rows ? row_dot(w_base + row * p.n_in, x_row, lane, LANES, ss) : 0.0;
    partial[tid] = vec2(sum, ss);
    barrier();
    [[unroll]] for (uint s = LANES / 2; s > 0; s >>= 1) {
        if (lane < s)
            partial[tid] += partial[tid + s];
        barrier();
    }
    if (lane == 0 && row < p.rows)
        store(out_base + row, partial[tid].x, partial[tid].y);
#endif
}
#endif

#ifdef MAT
#define TILE_ROWS 32
#define TILE_TOKENS 16
#define TILE_K 32
#define THREADS 64
// Thread t computes rows t % 16 and t % 16 + 16 for tokens t / 16 + 4j, j < 4.
#define ROW_STEP 16
#define TOKEN_STEP 4
layout(local_size_x = THREADS) in;

// k-major, so neighbouring threads (neighbouring rows) read neighbouring words; the +1 keeps
// the threads that store one row's k values in different banks.
shared float w_tile[TILE_K][TILE_ROWS + 1];
shared float x_tile[TILE_K][TILE_TOKENS + 1];
shared float x_sq[TILE_K][TILE_TOKENS + 1];    // NORM_IN: x_tile's raw squares summed over the steps

#ifdef MATMUL_ID
// A group does one expert for the tokens that chose it:
// thread 0 lists the next TILE_TOKENS of them.
shared uint tile_tokens[TILE_TOKENS];
shared uint tile_count;
uint tile_token(uint token0, uint t) { return tile_tokens[t]; }
#else
uint tile_token(uint token0, uint t) { return token0 + t; }
#endif

void load_w_tile(uint w_base, uint row0, uint k0, uint tid) {
    const uint chunks_per_row = TILE_K / 4;
    for (uint i = tid; i < TILE_ROWS * chunks_per_row; i += THREADS) {
        uint r = i / chunks_per_row;
        uint kk = 4 * (i % chunks_per_row);
        uint row = row0 + r, k = k0 + kk;
        vec4 v = vec4(0.0);
        if (row < p.rows) {
            uint e = w_base + row * p.n_in + k;
            if (k + 4 <= p.n_in) {
                v = weight4(e);
            } else {
                for (uint j = 0; j < 4 && k + j < p.n_in; j++)
                    v[j] = weight1(e + j);
            }
        }
        w_tile[kk][r] = v.x;
        w_tile[kk + 1][r] = v.y;
        w_tile[kk + 2][r] = v.z;
        w_tile[kk + 3][r] = v.w;
    }
}

void load_x_tile(uint token0, uint n_here, uint k0, uint tid) {
    for (uint i = tid; i < TILE_TOKENS * TILE_K; i += THREADS) {
        uint t = i / TILE_K, kk = i % TILE_K;
        uint k = k0 + kk;
        float v = t < n_here && k < p.n_in ? x[p.x_off + tile_token(token0, t) * p.n_in + k] : 0.0;
        if (NORM_IN != 0u) {
            x_sq[kk][t] = (k0 == 0u ? 0.0 : x_sq[kk][t]) + v * v;   // a slot is always this thread's
            v *= k < p.n_in ? nw1(k) : 0.0;
        }
        x_tile[kk][t] = v;
    }
}

// Rows row0 .. row0 + TILE_ROWS of the weight at w_base for the tile's n_here tokens.
void mat_tile(uint w_base, uint row0, uint token0, uint n_here, uint tid) {
    uint r = tid % ROW_STEP, t = tid / ROW_STEP;
    float acc[TILE_ROWS / ROW_STEP][TILE_TOKENS / TOKEN_STEP];
    [[unroll]] for (uint i = 0; i < TILE_ROWS / ROW_STEP; i++)
        [[unroll]] for (uint j = 0; j < TILE_TOKENS / TOKEN_STEP; j++)
            acc[i][j] = 0.0;

    for (uint k0 = 0; k0 < p.n_in; k0 += TILE_K) {
        load_w_tile(w_base, row0, k0, tid);
        load_x_tile(token0, n_here, k0, tid);
        barrier();
        for (uint kk = 0; kk < TILE_K; kk++) {
            [[unroll]] for (uint i = 0; i < TILE_ROWS / ROW_STEP; i++) {
                float w = w_tile[kk][r + ROW_STEP * i];
                [[unroll]] for (uint j = 0; j < TILE_TOKENS / TOKEN_STEP; j++)
                    acc[i][j] += w * x_tile[kk][t + TOKEN_STEP * j];
            }
        }
        barrier();
    }

    float ss[TILE_TOKENS / TOKEN_STEP];          // the tokens' sums of squares (NORM_IN)
    [[unroll]] for (uint j = 0; j < TILE_TOKENS / TOKEN_STEP; j++) {
        ss[j] = 0.0;
        if (NORM_IN != 0u)
            for (uint kk = 0; kk < TILE_K; kk++)
                ss[j] += x_sq[kk][t + TOKEN_STEP * j];
    }
    [[unroll]] for (uint i = 0; i < TILE_ROWS / ROW_STEP; i++) {
        uint row = row0 + r + ROW_STEP * i;
        [[unroll]] for (uint j = 0; j < TILE_TOKENS / TOKEN_STEP; j++) {
            uint tt = t + TOKEN_STEP * j;
            if (row < p.rows && tt < n_here)
                store(p.o_off + tile_token(token0, tt) * p.o_stride + p.col0 + row, acc[i][j], ss[j]);
        }
    }
}

void main() {
    uint row_tiles = (p.rows + TILE_ROWS - 1) / TILE_ROWS;
    uint g = group_index();
    uint row0 = (g % row_tiles) * TILE_ROWS;
    uint tid = gl_LocalInvocationID.x;
#ifdef MATMUL_ID
    // Slot e_count, in the part with e_start == 0 only: zeros for the skip slot's tokens.
    uint slot = g / row_tiles;
    bool skip = slot == p.e_count;
    if (slot > p.e_count || (skip && p.e_start != 0))
        return;                       // uniform over the group
    uint expert = p.e_start + slot;
    uint next = 0;                    // thread 0's place in the token list
    for (;;) {
        if (tid == 0) {
            uint n_here = 0;
            for (; next < p.n_tokens && n_here < TILE_TOKENS; next++) {
                uint id = ids[p.ids_off + next];
                if (skip ? id >= p.e_total : id == expert)
                    tile_tokens[n_here++] = next;
            }
            tile_count = n_here;
        }
        barrier();
        uint n_here = tile_count;
        if (n_here == 0)
            return;                   // uniform over the group
        if (skip) {
            for (uint i = tid; i < n_here * TILE_ROWS; i += THREADS)
                if (row0 + i % TILE_ROWS < p.rows)
                    y[p.o_off + tile_tokens[i / TILE_ROWS] * p.o_stride + p.col0 + row0 + i % TILE_ROWS] = 0.0;
        } else {
            mat_tile(p.w_off + slot * p.rows * p.n_in, row0, 0, n_here, tid);
        }
        barrier();                    // before thread 0 lists the next tokens
    }
#else
    uint token0 = (g / row_tiles) * TILE_TOKENS;
    if (token0 >= p.n_tokens)
        return;                       // the grid may round up; uniform over the group
    mat_tile(p.w_off, row0, token0, min(TILE_TOKENS, p.n_tokens - token0), tid);
#endif
}
#endif


#ifdef LANE
// For CPU devices (lavapipe): each invocation computes LANE_ROWS rows for LANE_TOKENS tokens
// (the variant's defines), with no reduction and no shared memory. llvmpipe runs a group's
// invocations in SIMD lanes and turns every buffer load into a loop over the lanes, so the
// cost is the number of loads:
// weights come 32 at a time in wide loads as raw quants (chunk_quants), their scales from each
// row's Head, reloaded once per HEAD_CHUNKS chunks, their offsets and mins applied through the
// sums of x; x comes in vec4s shared by the subgroup (share_loads.glsl), and each chunk of x serves
// LANE_ROWS rows, each chunk of weights LANE_TOKENS tokens. With MATMUL_ID (one token per
// group) the token's expert is read as in VEC; with EXPERT_TILES a group takes one tile of
// tokens of one expert from a table moe.tiles wrote (a group listing its expert's tokens
// itself, as MAT does, was slower on llvmpipe).
#define LANE_THREADS 8
layout(local_size_x = LANE_THREADS) in;
#include "share_loads.glsl"
// Chunks per step: 2 where the layout keeps chunk pairs together (CHUNK_PAIRS, whose rows are
// whole superblocks, so every row and span starts on an even chunk), for one token at a time
// (for tiles of tokens, twice their x in registers; not tried).
#if defined(CHUNK_PAIRS) && LANE_TOKENS == 1
#define CHUNK_STEP 2
#else
#define CHUNK_STEP 1
#endif

float x1(uint i) { return x_quad(i >> 2)[i & 3u]; }

// Every invocation of a group reads the same x and norm weight (unshared, x cost about as much
// as the weights): vec4 i of a chunk is loaded by neighbour i % SHARE as its mine[i / SHARE].
vec4 share(vec4 mine[8], uint i) { return from_lane(mine[i / SHARE], i % SHARE); }

// Rows row0 .. row0 + LANE_ROWS of the weight at w_base times the tokens token[0 .. n_here);
// entries past n_here repeat a real token and are not stored.
void lane_tile(uint w_base, uint row0, uint token[LANE_TOKENS], uint n_here) {
    uint w_row[LANE_ROWS];            // rows past the end repeat the last row, never written
    [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
        w_row[r] = w_base + min(row0 + r, p.rows - 1) * p.n_in;
    uint x_row[LANE_TOKENS];          // in floats
    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
        x_row[t] = p.x_off + token[t] * p.n_in;

    float acc[LANE_ROWS][LANE_TOKENS];
    [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
        [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
            acc[r][t] = 0.0;
    float ss[LANE_TOKENS];            // each token's sum of squares (NORM_IN)
    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
        ss[t] = 0.0;
    // Each row's scales (its Head) serve HEAD_CHUNKS chunks. Where every row starts such a span
    // (HEADS_ALIGNED) they are loaded once per span, before its chunks; otherwise one span covers
    // the row and each chunk loads its own. (A reload tested in each chunk cost as much on
    // llvmpipe, which runs both sides of every `if`, and when compiled out by HEADS_ALIGNED
    // still cost the aligned kernel 5 % of its instructions: a select of the two does not.)
    Head head[LANE_ROWS];
    uint n_chunks = p.n_in / 32u;
    uint span = HEADS_ALIGNED != 0u && HEAD_CHUNKS > 1u ? HEAD_CHUNKS : n_chunks;
    for (uint c0 = 0; c0 < n_chunks; c0 += span) {
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
            head[r] = load_head(w_row[r] + c0 * 32u);
        for (uint c = c0; c < min(c0 + span, n_chunks); c += CHUNK_STEP) {
            vec4 xs[CHUNK_STEP][LANE_TOKENS][8];
            vec2 x_sum[CHUNK_STEP][LANE_TOKENS];   // the two halves' sums, for the chunks' offsets
            [[unroll]] for (uint k = 0; k < CHUNK_STEP; k++) {
                vec4 nw_mine[8], x_mine[LANE_TOKENS][8];   // this invocation's share of the loads
                [[unroll]] for (uint j = 0; j < 8; j++) {
                    if (j < 8u / SHARE) {
                        uint i = j * SHARE + SHARE_ID;
                        nw_mine[j] = nw4((c + k) * 32u + 4u * i);   // read once for all the tokens
                        [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
                            x_mine[t][j] = x_quad((x_row[t] >> 2) + (c + k) * 8u + i);
                    }
                }
                [[unroll]] for (uint i = 0; i < 8; i++) {
                    vec4 w = share(nw_mine, i);
                    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
                        xs[k][t][i] = norm_in(share(x_mine[t], i), w, ss[t]);
                }
                [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
                    x_sum[k][t] = vec2(hsum((xs[k][t][0] + xs[k][t][1]) + (xs[k][t][2] + xs[k][t][3])),
                                       hsum((xs[k][t][4] + xs[k][t][5]) + (xs[k][t][6] + xs[k][t][7])));
            }
            [[unroll]] for (uint r = 0; r < LANE_ROWS; r++) {
                uint e = w_row[r] + c * 32u;
                Head row_head = HEADS_ALIGNED != 0u ? head[r] : load_head(e);
#if CHUNK_STEP == 2
                ChunkPair pair = load_chunk_pair(e);
#endif
                [[unroll]] for (uint k = 0; k < CHUNK_STEP; k++) {
                    vec4 q[8];
#if CHUNK_STEP == 2
                    vec4 s = pair_chunk(pair, k, e + 32u * k, row_head, q);
#else
                    vec4 s = chunk_quants(e, row_head, q);
#endif
                    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++) {
                        vec4 lo = q[0] * xs[k][t][0], hi = q[4] * xs[k][t][4];
                        [[unroll]] for (uint i = 1; i < 4; i++) {
                            lo += q[i] * xs[k][t][i];
                            hi += q[4 + i] * xs[k][t][4 + i];
                        }
                        acc[r][t] += s.x * hsum(lo) + s.y * hsum(hi) - dot(s.zw, x_sum[k][t]);
                    }
                }
            }
        }
    }
    // A tail shorter than a chunk (plain types only): 4 at a time, then one at a time.
    uint k = n_chunks * 32u;
    for (; k + 4u <= p.n_in; k += 4u) {
        vec4 xv[LANE_TOKENS];
        [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
            xv[t] = norm_in(x_quad((x_row[t] + k) >> 2), nw4(k), ss[t]);
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++) {
            vec4 w = weight4_aligned(w_row[r] + k);     // rows start on 4 (LANE_ALIGN)
            [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
                acc[r][t] += dot(w, xv[t]);
        }
    }
    for (; k < p.n_in; k++) {
        float xv[LANE_TOKENS];
        [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
            xv[t] = norm_in(x1(x_row[t] + k), nw1(k), ss[t]);
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
            [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
                acc[r][t] += weight1(w_row[r] + k) * xv[t];
    }

    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
            if (t < n_here && row0 + r < p.rows)
                store(p.o_off + token[t] * p.o_stride + p.col0 + row0 + r, acc[r][t], ss[t]);
}

void main() {
    const uint rows_per_group = LANE_THREADS * LANE_ROWS;
    uint row_groups = (p.rows + rows_per_group - 1) / rows_per_group;
    uint g = group_index();
#ifdef EXPERT_TILES
    // The group's tile of the table moe.tiles wrote (bound as ids): its slot, its token count
    // and its tokens. The table's tiles (ops.moe.n_tiles) vary fastest: llvmpipe gives each
    // thread a contiguous run of groups, and the filled tiles come first.
    uint n_tiles = (p.n_tokens + LANE_TOKENS - 1) / LANE_TOKENS + p.e_total + 1u;
    uint row0 = (g / n_tiles) * rows_per_group + gl_LocalInvocationID.x * LANE_ROWS;
    uint tile_at = p.ids_off + (g % n_tiles) * (2u + LANE_TOKENS);
    uint expert = ids[tile_at], n_here = ids[tile_at + 1u];
    if (n_here == 0u)
        return;                       // past the last tile; uniform over the group
    if (expert >= p.e_total) {        // the skip slot: rows of zeros
        if (p.e_start == 0)
            for (uint t = 0; t < n_here; t++)
                for (uint r = 0; r < LANE_ROWS && row0 + r < p.rows; r++)
                    y[p.o_off + ids[tile_at + 2u + t] * p.o_stride + p.col0 + row0 + r] = 0.0;
        return;
    }
    if (expert < p.e_start || expert >= p.e_start + p.e_count)
        return;                       // another part holds this expert
    uint token[LANE_TOKENS];
    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
        token[t] = ids[tile_at + 2u + t];
    lane_tile(p.w_off + (expert - p.e_start) * p.rows * p.n_in, row0, token, n_here);
#else
    uint row0 = (g % row_groups) * rows_per_group + gl_LocalInvocationID.x * LANE_ROWS;
    uint token0 = (g / row_groups) * LANE_TOKENS;
    if (token0 >= p.n_tokens)
        return;                       // the grid may round up; uniform over the group
    uint w_base = p.w_off;
#ifdef MATMUL_ID
    uint expert = ids[p.ids_off + token0];
    uint out_id = p.o_off + token0 * p.o_stride + p.col0;
    if (expert >= p.e_total) {
        if (p.e_start == 0)
            for (uint r = 0; r < LANE_ROWS && row0 + r < p.rows; r++)
                y[out_id + row0 + r] = 0.0;
        return;
    }
    if (expert < p.e_start || expert >= p.e_start + p.e_count)
        return;                       // another part holds this expert
    w_base += (expert - p.e_start) * p.rows * p.n_in;
#endif
    uint token[LANE_TOKENS];          // tokens past the end repeat the last one
    [[unroll]] for (uint t = 0; t < LANE_TOKENS; t++)
        token[t] = min(token0 + t, p.n_tokens - 1);
    lane_tile(w_base, row0, token, min(LANE_TOKENS, p.n_tokens - token0));
#endif
}
#endif
