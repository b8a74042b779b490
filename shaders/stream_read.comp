#version 450
// Streaming read for measuring memory bandwidth: each work group reads `per_thread` uvec4s per
// invocation from its own span of the source, adds all the words it read (u32, wrapping) and
// writes one sum per work group, so nothing can be optimized away and the result is exact.
// The access pattern is the variant's: GPUs read one coalesced WG-wide row per step; with LANE
// (CPU devices) each invocation reads its own contiguous run of the span, 4 uvec4s a step with
// one bounds check per run, in u64vec2 loads (wide_loads.glsl), as the LANE matmul kernels read
// their rows (llvmpipe turns each load into a loop over the SIMD lanes, so the coalesced loop's
// per-load branch and index math cost more than the memory there). Both give the same sums.
//! variant coalesced
//! variant lane LANE
#include "common.glsl"
#define WG 64
layout(local_size_x = WG) in;

#ifdef LANE
#include "wide_loads.glsl"
layout(binding = 0) readonly buffer Src { u64vec2 src_wide[]; };
uvec4 src_quad(uint i) { return quad_of(src_wide[i]); }
#else
layout(binding = 0) readonly buffer Src { uvec4 src[]; };
#endif
layout(binding = 1) writeonly buffer Sums { uint sums[]; };

// n_quads: uvec4s to read; src_off in uvec4s; out_off in u32 words.
layout(push_constant) uniform P { uint n_quads; uint src_off; uint per_thread; uint out_off; } p;

shared uint partial[WG];

void main() {
    uint group = group_index();
    uint lane = gl_LocalInvocationID.x;
    uint base = group * WG * p.per_thread;
    if (base >= p.n_quads) return;   // the 2-D grid's spare groups; uniform over the group
    uvec4 acc = uvec4(0);
#ifdef LANE
    uint q = base + lane * p.per_thread, end = min(q + p.per_thread, p.n_quads);
    for (; q + 4u <= end; q += 4u) {
        uint at = p.src_off + q;
        acc += (src_quad(at) + src_quad(at + 1u)) + (src_quad(at + 2u) + src_quad(at + 3u));
    }
    for (; q < end; q++)
        acc += src_quad(p.src_off + q);
#else
    for (uint k = 0; k < p.per_thread; ++k) {
        uint q = base + k * WG + lane;
        if (q < p.n_quads) {
            acc += src[p.src_off + q];
        }
    }
#endif
    partial[lane] = acc.x + acc.y + acc.z + acc.w;
    barrier();
    [[unroll]] for (uint half_ = WG / 2; half_ > 0; half_ >>= 1) {
        if (lane < half_) {
            partial[lane] += partial[lane + half_];
        }
        barrier();
    }
    if (lane == 0) {
        sums[p.out_off + group] = partial[0];
    }
}
