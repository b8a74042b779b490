#version 450
// Top-1 MoE output (zaya1.md §3.3 steps 7-8): each token's chosen expert output h [T, n] scaled
// by the router probability of its slot, probs [T, E + 1] with slot E the skip slot. A token
// whose slot is E (or beyond) gets the skip behaviour: 0 (`zero`), or its MoE input x scaled by
// probs[t, E] (`identity`). One invocation per element, so o may be h itself.
//! variant zero
//! variant identity SKIP_IDENTITY
#include "common.glsl"
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer H { float h[]; };
layout(binding = 1) readonly buffer Probs { float probs[]; };
layout(binding = 2) readonly buffer Ids { uint expert_ids[]; };
#ifdef SKIP_IDENTITY
layout(binding = 3) readonly buffer X { float x[]; };
layout(binding = 4) writeonly buffer Out { float o[]; };
#else
layout(binding = 3) writeonly buffer Out { float o[]; };
#endif

// n = T * cols; skip = E (the skip slot's column; probs rows have E + 1); offsets in elements.
layout(push_constant) uniform P {
    uint n; uint cols; uint skip; uint h_off; uint p_off; uint id_off; uint x_off; uint o_off;
} p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
    uint t = i / p.cols;
    uint slot = min(expert_ids[p.id_off + t], p.skip);
    float prob = probs[p.p_off + t * (p.skip + 1) + slot];
    float y;
    if (slot < p.skip) {
        y = h[p.h_off + i] * prob;
    } else {
#ifdef SKIP_IDENTITY
        y = x[p.x_off + i] * prob;
#else
        y = 0.0;
#endif
    }
    o[p.o_off + i] = y;
}
