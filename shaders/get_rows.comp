#version 450
// Embedding lookup: out[n, :] = W[ids[n], :] as F32, for the part of W holding rows
// row_start .. row_start + rows. One thread per 4 elements of an output row. An id outside
// the whole matrix (>= n_total) gives a row of zeros, written by the part with row_start == 0.
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
#include "weights.glsl"
layout(local_size_x = 256) in;

layout(binding = 1) readonly buffer Ids { uint ids[]; };
layout(binding = 2) writeonly buffer Out { float o[]; };

// Offsets count elements of each buffer's type.
layout(push_constant) uniform P {
    uint w_off; uint rows; uint row_start; uint n_total; uint n_in; uint ids_off; uint n_ids; uint o_off;
} p;

void main() {
    uint chunks_per_row = (p.n_in + 3) / 4;
    uint i = GLOBAL_INDEX;
    if (i >= p.n_ids * chunks_per_row)
        return;
    uint n = i / chunks_per_row;
    uint k = 4 * (i % chunks_per_row);
    uint id = ids[p.ids_off + n];
    uint out_at = p.o_off + n * p.n_in + k;
    uint count = min(4u, p.n_in - k);
    if (id >= p.n_total) {
        if (p.row_start == 0)
            for (uint j = 0; j < count; j++)
                o[out_at + j] = 0.0;
        return;
    }
    if (id < p.row_start || id >= p.row_start + p.rows)
        return;                       // another part holds this row
    uint e = p.w_off + (id - p.row_start) * p.n_in + k;
    if (count == 4) {
        vec4 v = weight4(e);
        o[out_at] = v.x;
        o[out_at + 1] = v.y;
        o[out_at + 2] = v.z;
        o[out_at + 3] = v.w;
    } else {
        for (uint j = 0; j < count; j++)
            o[out_at + j] = weight1(e + j);
    }
}
