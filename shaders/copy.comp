#version 450
// Strided copy of up to 4-D views into F32 (the contiguity pass and the F16/BF16 -> F32 cast):
// element i of the [n0, n1, n2, n3] index space is read at src_off + sum(i_k * src_stride_k)
// and written at dst_off + sum(i_k * dst_stride_k). Offsets and strides count elements of the
// buffer's own type; 16-bit sources are read as uint words (element e is half e & 1 of word e >> 1).
//! variant f32 SRC_F32
//! variant f16 SRC_F16
//! variant bf16 SRC_BF16
#include "common.glsl"
layout(local_size_x = 256) in;

#ifdef SRC_F32
// 32-bit words copied as bits, so u32/i32 views copy exactly too.
layout(binding = 0) readonly buffer Src { uint src[]; };
layout(binding = 1) writeonly buffer Dst { uint dst[]; };
#else
layout(binding = 0) readonly buffer Src { uint src[]; };
layout(binding = 1) writeonly buffer Dst { float dst[]; };
#endif

layout(push_constant) uniform P {
    uint n;
    uint n1; uint n2; uint n3;          // sizes of the inner three axes (axis 0 follows from n)
    uint src_off; uint s0; uint s1; uint s2; uint s3;
    uint dst_off; uint d0; uint d1; uint d2; uint d3;
} p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
    uint i3 = i % p.n3;  i /= p.n3;
    uint i2 = i % p.n2;  i /= p.n2;
    uint i1 = i % p.n1;
    uint i0 = i / p.n1;
    uint s = p.src_off + i0 * p.s0 + i1 * p.s1 + i2 * p.s2 + i3 * p.s3;
    uint d = p.dst_off + i0 * p.d0 + i1 * p.d1 + i2 * p.d2 + i3 * p.d3;
#if defined(SRC_F32)
    dst[d] = src[s];
#elif defined(SRC_F16)
    dst[d] = unpackHalf2x16(src[s >> 1])[s & 1u];
#else
    uint word = src[s >> 1];
    dst[d] = uintBitsToFloat((s & 1u) == 0u ? word << 16 : word & 0xFFFF0000u);
#endif
}
