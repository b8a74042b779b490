#version 450
// dst[dst_off + i] = src[src_off + i]: uploads, downloads and dense copies of 4-byte data.
#include "common.glsl"
layout(local_size_x = 256) in;
layout(binding = 0) readonly buffer Src { uint src[]; };
layout(binding = 1) writeonly buffer Dst { uint dst[]; };
layout(push_constant) uniform P { uint src_off; uint dst_off; uint n; } p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i < p.n) dst[p.dst_off + i] = src[p.src_off + i];
}
