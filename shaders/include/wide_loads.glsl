// 16-byte loads for the CPU-device (LANE) kernels. llvmpipe loads each component of a buffer
// load on its own, once per SIMD lane: a bounds check, a scalar load and a round trip of the
// lane's vector through the stack. A uvec4 is four of those; the same 16 bytes as a u64vec2 are
// two, so these kernels read through u64vec2 views of their buffers (1.5-1.8x the read speed on
// llvmpipe). Needs shaderInt64: the LANE kernels run only on devices that have it
// (vkinfer/gpu/device.py, lane_kernels).
#ifndef WIDE_LOADS_GLSL
#define WIDE_LOADS_GLSL
#extension GL_ARB_gpu_shader_int64 : require

uvec4 quad_of(u64vec2 v) {
    return uvec4(unpackUint2x32(v.x), unpackUint2x32(v.y));
}

vec4 float_quad(u64vec2 v) { return uintBitsToFloat(quad_of(v)); }

u64vec2 wide_of(vec4 v) {
    uvec4 u = floatBitsToUint(v);
    return u64vec2(packUint2x32(u.xy), packUint2x32(u.zw));
}

#endif
