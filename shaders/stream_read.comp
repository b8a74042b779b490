#version 450
// Streaming read for measuring memory bandwidth: each work group reads `per_thread` uvec4s per
// invocation from its own span of the source (one coalesced WG-wide row per step), adds all
// the words it read (u32, wrapping) and writes one sum per work group, so nothing can be
// optimized away and the result is exact.
#include "common.glsl"
#define WG 64
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer Src { uvec4 src[]; };
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
    for (uint k = 0; k < p.per_thread; ++k) {
        uint q = base + k * WG + lane;
        if (q < p.n_quads) {
            acc += src[p.src_off + q];
        }
    }
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
