// Byte-lane helpers for the weight decoders. Every block type's device layout is aligned words
// (vkinfer/gpu/tensor.py), so the decoders read whole words and work on their 4 bytes at once.
#ifndef BYTES_GLSL
#define BYTES_GLSL

// The 4 bytes of a little-endian word as floats, lowest byte first.
vec4 bytes4(uint word) {
    return vec4(uvec4(word, word >> 8, word >> 16, word >> 24) & 0xFFu);
}

#define EACH_BYTE(bits) ((bits) * 0x01010101u)

// v[i] by selects: a dynamic index into a vector may become a loop over lanes on a CPU device.
uint pick(uvec4 v, uint i) {
    return i < 2u ? (i == 0u ? v.x : v.y) : (i == 2u ? v.z : v.w);
}

#endif
