// K-quant decoding, one type per compile: Q2_K, Q3_K, Q4_K, Q5_K or Q6_K (256-element
// super-blocks). Bit layouts follow gguf-py's dequantizers (gguf/quants.py), the test oracle;
// Q4_K, Q5_K and Q6_K are in their device layouts (vkinfer/gpu/tensor.py), made of nibble chunks
// (nibbles.glsl). Values are computed in gguf-py's order, (d * scale) * q - (dmin * min), under
// `precise` (no fused multiply-add), so they equal its float32 results exactly.
#include "bytes.glsl"

#define WEIGHT_BLOCK 256

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
// Q4_K, 144 bytes: half d; half dmin; u8 scales[12]; 8 nibble chunks.
// Q5_K, 176 bytes: the same with 8 1-bit planes (the fifth bits) before the chunks.
// Chunk j (elements 32j ..) has a 6-bit scale and min packed in the 12 scale bytes.
#if defined(WTYPE_Q4_K)
#define BLOCK_QUADS 9u
#define NIB_HIGH 0
#else
#define BLOCK_QUADS 11u
#define NIB_HIGH 1
#endif
#define Q_OFFSET 0.0

#define HEAD_CHUNKS 8u
// A block's 8 6-bit scales and mins unpacked to bytes (scales 0-3, mins 0-3, scales 4-7, mins
// 4-7), and (d, dmin). From the 12 scale bytes, words 1..3 of the block: sub-block j < 4 has
// scale scales[j] & 63 and min scales[j + 4] & 63; j >= 4 takes the low (scale) or high (min)
// nibble of scales[j + 4] and the top 2 bits of scales[j - 4] (scale) or scales[j] (min).
struct Head { uvec4 bytes; vec2 d; };

Head load_head(uint e) {
    uvec4 h = w_quads[(e >> 8) * BLOCK_QUADS];
    uvec4 bytes = uvec4(h.y & EACH_BYTE(63u), h.z & EACH_BYTE(63u),
                        (h.w & EACH_BYTE(0xFu)) | ((h.y >> 2) & EACH_BYTE(0x30u)),
                        ((h.w >> 4) & EACH_BYTE(0xFu)) | ((h.z >> 2) & EACH_BYTE(0x30u)));
    return Head(bytes, unpackHalf2x16(h.x));
}

vec4 head_scales(Head head, uint e) {
    uint j = (e >> 5) & 7u, shift = 8u * (j & 3u);
    uvec2 both = j < 4u ? head.bytes.xy : head.bytes.zw;
    float scale = float((both.x >> shift) & 0xFFu), minimum = float((both.y >> shift) & 0xFFu);
    return vec4(vec2(head.d.x * scale), vec2(head.d.y * minimum));
}

uint chunk_qs(uint e) { return (e >> 8) * BLOCK_QUADS + (BLOCK_QUADS - 8u) + ((e >> 5) & 7u); }
uint chunk_high(uint e) { return (e >> 8) * (4u * BLOCK_QUADS) + 4u + ((e >> 5) & 7u); }

#include "nibbles.glsl"

#elif defined(WTYPE_Q6_K)
// Superblocks of 8 blocks: 8 bodies of 208 bytes (13 uvec4s: 8 nibble chunks, 8 2-bit planes,
// the 16 signed scales, one per 16 elements), then the 8 fp16 d. Element 16h + i of chunk j is
// d * scales[2j + h] * (q - 32).
#define NIB_HIGH 2
#define Q_OFFSET 32.0

uint chunk_qs(uint e) { return (e >> 11) * 105u + ((e >> 8) & 7u) * 13u + ((e >> 5) & 7u); }
uint chunk_high(uint e) { return (e >> 11) * 210u + ((e >> 8) & 7u) * 26u + 16u + ((e >> 5) & 7u); }

#define HEAD_CHUNKS 8u
struct Head { uvec4 scales; float d; };  // a block's 16 scales and its d

Head load_head(uint e) {
    uint block = (e >> 8) & 7u, super = e >> 11;
    vec2 ds = unpackHalf2x16(w_words[super * 420u + 416u + (block >> 1)]);
    return Head(w_quads[super * 105u + block * 13u + 12u], (block & 1u) != 0u ? ds.y : ds.x);
}

vec4 head_scales(Head head, uint e) {
    uint j = (e >> 5) & 7u;
    int pair = int(pick(head.scales, j >> 1) >> (16u * (j & 1u)));
    return vec4(head.d * float(bitfieldExtract(pair, 0, 8)), head.d * float(bitfieldExtract(pair, 8, 8)),
                0.0, 0.0);
}

#include "nibbles.glsl"

#endif

float weight1(uint e) {
    return weight4(e & ~3u)[e & 3u];
}
