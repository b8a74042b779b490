// K-quant decoding, one type per compile: Q2_K, Q3_K, Q4_K, Q5_K or Q6_K (256-element
// super-blocks). Bit layouts follow gguf-py's dequantizers (gguf/quants.py), the test oracle.
//
// In every format the 4 elements i..i+3 that weight4 decodes (i a multiple of 4, the index in
// the block) sit in 4 consecutive bytes of each quant array, at the same bit position, and share
// one sub-block scale, so a call reads one or two words per array plus the scale bytes.
// Values are computed in gguf-py's order, (d * scale) * q - (dmin * min), under `precise` (no
// fused multiply-add), so they equal its float32 results exactly.
#include "bytes.glsl"

#define WEIGHT_BLOCK 256

// The 4 bytes of a little-endian word as floats, lowest byte first.
vec4 bytes4(uint word) {
    return vec4(uvec4(word, word >> 8, word >> 16, word >> 24) & 0xFFu);
}

#define EACH_BYTE(bits) ((bits) * 0x01010101u)

#if defined(WTYPE_Q2_K)
// 84 bytes: u8 scales[16]; u8 qs[64]; half d; half dmin. Element i = 128n + 32s + l is bits
// 2s..2s+1 of qs[32n + l]; sub-block i / 16 has scale (low nibble) and min (high nibble).
#define BLOCK_BYTES 84u

vec4 weight4(uint e) {
    uint base = (e / 256u) * BLOCK_BYTES, i = e % 256u;
    uint quants = w_words[(base + 16u + (i / 128u) * 32u + i % 32u) >> 2];
    vec4 q = bytes4((quants >> (2u * ((i / 32u) % 4u))) & EACH_BYTE(3u));
    uint scale = read_u8(base + i / 16u);
    vec2 d = unpackHalf2x16(w_words[(base + 80u) >> 2]);      // d, dmin
    precise vec4 y = (d.x * float(scale & 0xFu)) * q - d.y * float(scale >> 4);
    return y;
}

#elif defined(WTYPE_Q3_K)
// 110 bytes: u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d. Element i = 128n + 32s + l has low
// bits 2s..2s+1 of qs[32n + l] and high bit i / 32 of hmask[l]; a clear high bit subtracts 4.
// Sub-block k = i / 16 has a 6-bit scale, minus 32: low 4 bits from nibble k / 8 of
// scales[k % 8], high 2 bits from bits 2(k / 4).. of scales[8 + k % 4].
#define BLOCK_BYTES 110u

vec4 weight4(uint e) {
    uint base = (e / 256u) * BLOCK_BYTES, i = e % 256u;
    uint l = i % 32u;
    uint low = read_u32_unaligned(base + 32u + (i / 128u) * 32u + l) >> (2u * ((i / 32u) % 4u));
    uint high = read_u32_unaligned(base + l) >> (i / 32u);
    vec4 q = bytes4(low & EACH_BYTE(3u)) - 4.0 * bytes4(~high & EACH_BYTE(1u));
    uint k = i / 16u;
    uint scale_low = (read_u8(base + 96u + k % 8u) >> (4u * (k / 8u))) & 0xFu;
    uint scale_high = (read_u8(base + 104u + k % 4u) >> (2u * (k / 4u))) & 3u;
    float d = read_f16(base + 108u);
    precise vec4 y = (d * float(int(scale_low | (scale_high << 4)) - 32)) * q;
    return y;
}

#elif defined(WTYPE_Q4_K) || defined(WTYPE_Q5_K)
// Q4_K, 144 bytes: half d; half dmin; u8 scales[12]; u8 qs[128].
// Q5_K, 176 bytes: the same, then u8 qh[32] before qs.
// Element i = 64c + 32h + l is nibble h of qs[32c + l]; Q5_K adds bit i / 32 of qh[l] as bit 4.
// Sub-block j = i / 32 has a 6-bit scale and min packed in the 12 scale bytes.
#if defined(WTYPE_Q4_K)
#define BLOCK_BYTES 144u
#define QS_AT 16u
#else
#define BLOCK_BYTES 176u
#define QH_AT 16u
#define QS_AT 48u
#endif

// (scale, min) of sub-block j from the block's 12 scale bytes, words 1..3 of the block.
uvec2 scale_min_of(uvec3 scales, uint j) {
    uint shift = 8u * (j % 4u);
    uint a = (scales.x >> shift) & 0xFFu;                  // scales[j % 4]
    uint b = (scales.y >> shift) & 0xFFu;                  // scales[j % 4 + 4]
    if (j < 4u)
        return uvec2(a & 63u, b & 63u);
    uint c = (scales.z >> shift) & 0xFFu;                  // scales[j % 4 + 8]
    return uvec2((c & 0xFu) | ((a >> 6) << 4), (c >> 4) | ((b >> 6) << 4));
}

// `word` is the block's first word (the blocks are word-aligned).
uvec2 scale_min(uint word, uint j) {
    return scale_min_of(uvec3(w_words[word + 1u], w_words[word + 2u], w_words[word + 3u]), j);
}

// Elements 4k..4k+3 of a sub-block from their quant word (nibbles, shifted for its half, and
// for Q5_K the qh word) and the sub-block's scale and min terms, as gguf-py computes them.
vec4 k_quant4(uint quants, uint qh, uint j, float scale, float minimum) {
    uint bits = (quants >> (4u * (j % 2u))) & EACH_BYTE(0xFu);
#if defined(WTYPE_Q5_K)
    bits |= ((qh >> j) & EACH_BYTE(1u)) << 4;
#endif
    precise vec4 y = scale * bytes4(bits) - minimum;
    return y;
}

vec4 weight4(uint e) {
    uint word = (e / 256u) * (BLOCK_BYTES / 4u), i = e % 256u;
    uint l = i % 32u, j = i / 32u;
    uint quants = w_words[word + (QS_AT + (i / 64u) * 32u + l) / 4u];
#if defined(WTYPE_Q5_K)
    uint qh = w_words[word + (QH_AT + l) / 4u];
#else
    uint qh = 0u;
#endif
    uvec2 sm = scale_min(word, j);
    vec2 d = unpackHalf2x16(w_words[word]);                // d, dmin
    return k_quant4(quants, qh, j, d.x * float(sm.x), d.y * float(sm.y));
}

#elif defined(WTYPE_Q6_K)
// 210 bytes: u8 ql[128]; u8 qh[64]; i8 scales[16]; half d. Element i = 128n + 64h + m is
// nibble h of ql[64n + m] with bits 2s..2s+1 of qh[32n + m % 32] on top (s = (i / 32) % 4),
// minus 32; sub-block i / 16 has a signed 8-bit scale. On the device (vkinfer/gpu/tensor.py)
// blocks come in superblocks of 8: their first 208 bytes each, then their 8 d.
#define Q6_SUPER_BYTES 1680u
#define Q6_BODY_BYTES 208u

// Byte address of block e / 256's body, and of its d.
uint q6_body(uint e) {
    return (e >> 11) * Q6_SUPER_BYTES + ((e >> 8) & 7u) * Q6_BODY_BYTES;
}
uint q6_d_at(uint e) {
    return (e >> 11) * Q6_SUPER_BYTES + 8u * Q6_BODY_BYTES + 2u * ((e >> 8) & 7u);
}

// Elements from their ql word (shifted for their nibble), qh word (shifted for their bits)
// and the sub-block's d * scale, as gguf-py computes them.
vec4 q6_quant4(uint low, uint high, float scale) {
    uint bits = (low & EACH_BYTE(0xFu)) | ((high & EACH_BYTE(3u)) << 4);
    precise vec4 y = scale * (bytes4(bits) - 32.0);
    return y;
}

vec4 weight4(uint e) {
    uint base = q6_body(e), i = e % 256u;
    uint n = i / 128u;
    uint low = w_words[(base + 64u * n + i % 64u) >> 2] >> (4u * ((i / 64u) % 2u));
    uint high = w_words[(base + 128u + 32u * n + i % 32u) >> 2] >> (2u * ((i / 32u) % 4u));
    int scale = bitfieldExtract(int(read_u8(base + 192u + i / 16u)), 0, 8);
    return q6_quant4(low, high, read_f16(q6_d_at(e)) * float(scale));
}

#endif

float weight1(uint e) {
    return weight4(e & ~3u)[e & 3u];
}
