#version 450
// dst[off + i] = value for i < n.
#include "common.glsl"
layout(local_size_x = 256) in;
layout(binding = 0) writeonly buffer Dst { uint dst[]; };
layout(push_constant) uniform P { uint off; uint n; uint value; } p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i < p.n) dst[p.off + i] = p.value;
}
