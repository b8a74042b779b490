// GGUF legacy 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (one per compile, by WTYPE_*).
// Blocks follow each other unpadded from byte 0 of w_words[], so a block of 18, 22 or 34 bytes
// may start mid-word; fields are read with bytes.glsl. weight4(e) takes e a multiple of 4, so
// its 4 elements are consecutive quants of one block:
//   Q4_*: elements j..j+3 (j < 16) are the low nibbles of qs[j..j+3], j >= 16 the high nibbles
//         of qs[j-16..j-13]: one u32 read.
//   Q5_*: the same nibbles plus bits j..j+3 of the block's u32 qh as the fifth bit.
//   Q8_0: not in GGUF order on the device (vkinfer/gpu/tensor.py): superblocks of 8 blocks, 64
//         words of quants then 4 words of fp16 scales, so elements e..e+3 are one aligned word.
// Values are computed as gguf-py's dequantizer does, in f32: d * q, and for the _1 types
// (d * q) + m rounded twice (`precise` stops the compiler fusing them into an fma).
#include "bytes.glsl"

#define WEIGHT_BLOCK 32

#if defined(WTYPE_Q4_0)
#define BLOCK_BYTES 18u
#elif defined(WTYPE_Q4_1)
#define BLOCK_BYTES 20u
#elif defined(WTYPE_Q5_0)
#define BLOCK_BYTES 22u
#elif defined(WTYPE_Q5_1)
#define BLOCK_BYTES 24u
#endif

// The 4 bytes of a little-endian word, lowest first.
uvec4 word_bytes(uint word) {
    return (uvec4(word) >> uvec4(0u, 8u, 16u, 24u)) & 0xFFu;
}

// The 4 nibbles for elements j..j+3 of a block whose qs[16] starts at byte qs_addr.
uvec4 nibbles4(uint qs_addr, uint j) {
    uint shift = (j & 16u) >> 2;          // 0 for the low nibbles, 4 for the high ones
    return word_bytes(read_u32_unaligned(qs_addr + (j & 15u)) >> shift) & 0xFu;
}

// Fifth bits for elements j..j+3 from the block's qh word, shifted to bit 4.
uvec4 high_bits4(uint qh, uint j) {
    return ((uvec4(qh >> j) >> uvec4(0u, 1u, 2u, 3u)) & 1u) << 4;
}

// Signed bytes of a word, lowest first.
ivec4 word_i8(uint word) {
    return ivec4(int(word) << 24, int(word) << 16, int(word) << 8, int(word)) >> 24;
}

#if defined(WTYPE_Q8_0)
#define Q8_SUPER_WORDS 68u
// The scale of element e's block.
float q8_scale(uint e) {
    uint word = w_words[(e >> 8) * Q8_SUPER_WORDS + 64u + ((e & 255u) >> 6)];
    vec2 both = unpackHalf2x16(word);
    return (e & 32u) != 0u ? both.y : both.x;
}

vec4 weight4(uint e) {
    return vec4(word_i8(w_words[(e >> 8) * Q8_SUPER_WORDS + ((e & 255u) >> 2)])) * q8_scale(e);
}
#else
vec4 weight4(uint e) {
    uint block = e / 32u;
    uint j = e % 32u;
    uint b = block * BLOCK_BYTES;
#if defined(WTYPE_Q4_0)
    float d = read_f16(b);
    return d * (vec4(nibbles4(b + 2u, j)) - 8.0);
#elif defined(WTYPE_Q5_0)
    float d = read_f16(b);
    uvec4 q = nibbles4(b + 6u, j) | high_bits4(read_u32_unaligned(b + 2u), j);
    return d * (vec4(q) - 16.0);
#else
    // Q4_1 (20 bytes) and Q5_1 (24 bytes) blocks start word-aligned: d and m share word 0.
    vec2 dm = unpackHalf2x16(w_words[b >> 2]);
#if defined(WTYPE_Q4_1)
    uvec4 q = nibbles4(b + 4u, j);
#else
    uvec4 q = nibbles4(b + 8u, j) | high_bits4(w_words[(b >> 2) + 1u], j);
#endif
    precise vec4 scaled = dm.x * vec4(q);
    precise vec4 value = scaled + dm.y;
    return value;
#endif
}
#endif

// Only reached for a row tail shorter than 4, which a block type never has; kept for callers.
float weight1(uint e) {
    return weight4(e & ~3u)[e & 3u];
}
