#version 450
// Top-k (and argmax, k = 1) over the rows of x in two passes. Order: value descending, then
// index ascending, so the result is unique and ties go to the lower index.
// `select`: work group (row, chunk) finds the top k of its chunk of the row and writes them as
//   (value bits, index) pairs to cand [rows, n_chunks, k, 2]; a chunk with fewer than k
//   elements pads with (-inf, 0xFFFFFFFF), which sorts after everything real.
// `merge`: one work group per row picks the top k of the row's n_chunks * k candidates and
//   writes ids [rows, k] and vals [rows, k].
// Each round takes the best of the invocations' candidates by a tree reduction; only the
// invocation that held the winner looks for its next candidate: its best element that sorts
// after the winner (every element before the winner has been taken already).
//! variant select SELECT
//! variant merge MERGE
#include "common.glsl"
#define WG 64
layout(local_size_x = WG) in;

#ifdef SELECT
layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Cand { uint cand_out[]; };
#else
layout(binding = 0) readonly buffer Cand { uint cand[]; };
layout(binding = 1) writeonly buffer Ids { uint ids[]; };
layout(binding = 2) writeonly buffer Vals { float vals[]; };
#endif

// n: elements per row (select: columns of x; merge: n_chunks * k candidates); chunk: elements
// per work group (merge: n). in_off in elements of the input (x floats or cand pairs);
// out_off in elements of the output (cand pairs, or ids/vals).
layout(push_constant) uniform P {
    uint rows; uint n; uint chunk; uint n_chunks; uint k; uint in_off; uint ids_off; uint vals_off;
} p;

#define NO_INDEX 0xFFFFFFFFu
#define NEG_INF uintBitsToFloat(0xFF800000u)

shared float red_val[WG];
shared uint red_idx[WG];

// a comes before b in the order.
bool before(float av, uint ai, float bv, uint bi) { return av > bv || (av == bv && ai < bi); }

void element(uint row, uint e, out float v, out uint idx) {
#ifdef SELECT
    v = x[p.in_off + row * p.n + e];
    idx = e;
#else
    uint w = 2 * (p.in_off + row * p.n + e);
    v = uintBitsToFloat(cand[w]);
    idx = cand[w + 1];
#endif
}

void main() {
    uint group = group_index();
    if (group >= p.rows * p.n_chunks) return;   // uniform over the work group
    uint lane = gl_LocalInvocationID.x;
    uint row = group / p.n_chunks, chunk = group % p.n_chunks;
    uint start = chunk * p.chunk, stop = min(start + p.chunk, p.n);

    // This invocation's candidate: its best element that sorts after (after_v, after_i).
    float best_v = NEG_INF, after_v = 0.0;
    uint best_i = NO_INDEX, after_i = 0;
    bool rescan = true;
    for (uint r = 0; r < p.k; ++r) {
        if (rescan) {
            best_v = NEG_INF;
            best_i = NO_INDEX;
            for (uint e = start + lane; e < stop; e += WG) {
                float v;
                uint idx;
                element(row, e, v, idx);
                if ((r == 0 || before(after_v, after_i, v, idx)) && before(v, idx, best_v, best_i)) {
                    best_v = v;
                    best_i = idx;
                }
            }
        }
        red_val[lane] = best_v;
        red_idx[lane] = best_i;
        barrier();
        [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
            if (lane < half_ && before(red_val[lane + half_], red_idx[lane + half_], red_val[lane], red_idx[lane])) {
                red_val[lane] = red_val[lane + half_];
                red_idx[lane] = red_idx[lane + half_];
            }
            barrier();
        }
        float win_v = red_val[0];
        uint win_i = red_idx[0];
        barrier();                              // red_* is rewritten next round
        rescan = win_i == best_i && win_v == best_v;
        after_v = win_v;
        after_i = win_i;
        if (lane == 0) {
#ifdef SELECT
            uint w = 2 * (group * p.k + r);
            cand_out[w] = floatBitsToUint(win_v);
            cand_out[w + 1] = win_i;
#else
            ids[p.ids_off + row * p.k + r] = win_i;
            vals[p.vals_off + row * p.k + r] = win_v;
#endif
        }
    }
}
