// K-quant decoding, one type per compile: Q2_K, Q3_K, Q4_K, Q5_K or Q6_K (256-element
// super-blocks), in their device layouts (vkinfer/gpu/tensor.py), chunks of bit planes
// (nibbles.glsl). Bit layouts follow gguf-py's dequantizers (gguf/quants.py), the test oracle.
// Values are computed in gguf-py's order, (d * scale) * q - (dmin * min), under `precise` (no
// fused multiply-add), so they equal its float32 results exactly.
#include "bytes.glsl"

#define WEIGHT_BLOCK 256

#if defined(WTYPE_Q2_K)
// Superblocks of 8 blocks (168 words): the 8 blocks' quants as 2-bit planes (8 chunks of 2 words
// each), their 16 scale bytes each (low nibble scale, high nibble min, one per 16 elements),
// then their (d, dmin). Element 16h + i of chunk j is (d * scale) * q - dmin * min of sub-block
// 2j + h.
#define NO_NIBBLES
#define PLANE2_AT 0
#define Q_OFFSET 0.0
#define HEAD_CHUNKS 8u
struct Head { uvec4 scales; vec2 d; };

uint chunk_plane2(uint e) { return (e >> 11) * 84u + ((e >> 8) & 7u) * 8u + ((e >> 5) & 7u); }

Head load_head(uint e) {
    uint super = e >> 11, block = (e >> 8) & 7u;
    return Head(w_quad(super * 42u + 32u + block), unpackHalf2x16(w_words[super * 168u + 160u + block]));
}

vec4 head_scales(Head head, uint e) {
    uint j = (e >> 5) & 7u;
    uint pair = pick(head.scales, j >> 1) >> (16u * (j & 1u));
    vec2 scale = vec2(pair & 0xFu, (pair >> 8) & 0xFu), minimum = vec2((pair >> 4) & 0xFu, (pair >> 12) & 0xFu);
    return vec4(head.d.x * scale, head.d.y * minimum);
}

#include "nibbles.glsl"

#elif defined(WTYPE_Q3_K)
// Superblocks of 8 blocks (220 words): the 8 blocks' low 2 bits as 2-bit planes, their high bits
// (hmask) as 1-bit planes, their 12 scale bytes each, then their 8 fp16 d. Element 16h + i of
// chunk j is (d * (scale - 32)) * (q - 4) of sub-block k = 2j + h, q = low | high << 2; its
// 6-bit scale has its low 4 bits in nibble k / 8 of scales[k % 8] and its high 2 bits at bit
// 2(k / 4) of scales[8 + k % 4].
#define NO_NIBBLES
#define PLANE2_AT 0
#define PLANE1_AT 2
#define Q_OFFSET 4.0
#define HEAD_CHUNKS 8u
struct Head { uvec3 scales; float d; };

uint chunk_plane2(uint e) { return (e >> 11) * 110u + ((e >> 8) & 7u) * 8u + ((e >> 5) & 7u); }
uint chunk_plane1(uint e) { return (e >> 11) * 220u + 128u + ((e >> 8) & 7u) * 8u + ((e >> 5) & 7u); }

Head load_head(uint e) {
    uint at = (e >> 11) * 220u, block = (e >> 8) & 7u;
    uint s = at + 192u + 3u * block;
    vec2 ds = unpackHalf2x16(w_words[at + 216u + (block >> 1)]);
    return Head(uvec3(w_words[s], w_words[s + 1u], w_words[s + 2u]), (block & 1u) != 0u ? ds.y : ds.x);
}

float q3_scale(Head head, uint k) {
    uint low = (((k & 7u) < 4u ? head.scales.x : head.scales.y) >> (8u * (k & 3u) + 4u * (k >> 3))) & 0xFu;
    uint high = (head.scales.z >> (8u * (k & 3u) + 2u * (k >> 2))) & 3u;
    return head.d * float(int(low | (high << 4)) - 32);
}

vec4 head_scales(Head head, uint e) {
    uint j = (e >> 5) & 7u;
    return vec4(q3_scale(head, 2u * j), q3_scale(head, 2u * j + 1u), 0.0, 0.0);
}

#include "nibbles.glsl"

#elif defined(WTYPE_Q4_K) || defined(WTYPE_Q5_K)
// Q4_K, 144 bytes: half d; half dmin; u8 scales[12]; 8 nibble chunks.
// Q5_K, 176 bytes: the same with 8 1-bit planes (the fifth bits) before the chunks.
// Chunk j (elements 32j ..) has a 6-bit scale and min packed in the 12 scale bytes.
// Superblocks of 2 blocks field by field: the 2 heads (d, dmin, scales; a uvec4 each), for Q5_K
// the 2 blocks' planes (8 words each), then the 2 blocks' chunks, so that every pair of chunks
// 2k, 2k + 1 is one aligned 32-byte unit (CHUNK_PAIRS).
#if defined(WTYPE_Q4_K)
#define SUPER_QUADS 18u
#else
#define SUPER_QUADS 22u
#define PLANE1_AT 4
#endif
#define Q_OFFSET 0.0
#define CHUNK_PAIRS

#define HEAD_CHUNKS 8u
// A block's 8 6-bit scales and mins unpacked to bytes (scales 0-3, mins 0-3, scales 4-7, mins
// 4-7), and (d, dmin). From the 12 scale bytes, words 1..3 of the block: sub-block j < 4 has
// scale scales[j] & 63 and min scales[j + 4] & 63; j >= 4 takes the low (scale) or high (min)
// nibble of scales[j + 4] and the top 2 bits of scales[j - 4] (scale) or scales[j] (min).
struct Head { uvec4 bytes; vec2 d; };

Head load_head(uint e) {
    uvec4 h = w_quad((e >> 9) * SUPER_QUADS + ((e >> 8) & 1u));
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

uint chunk_qs(uint e) { return (e >> 9) * SUPER_QUADS + (SUPER_QUADS - 16u) + ((e >> 5) & 15u); }
uint chunk_plane1(uint e) { return (e >> 9) * (4u * SUPER_QUADS) + 8u + ((e >> 5) & 15u); }

#include "nibbles.glsl"

#elif defined(WTYPE_Q6_K)
// Superblocks of 8 blocks (105 uvec4s): the 8 fp16 d, then 8 bodies of 13 uvec4s: the 16 signed
// scales (one per 16 elements), then for each pair of chunks 2k, 2k + 1 their nibbles (2 uvec4s)
// and their 2-bit planes (one uvec4). Element 16h + i of chunk j is d * scales[2j + h] * (q - 32).
// (Each chunk's bits close together and the scales first: twice as fast on llvmpipe as the
// nibbles, planes and scales in three runs.)
#define PLANE2_AT 4
#define Q_OFFSET 32.0

uint q6_body(uint e) { return (e >> 11) * 105u + 1u + ((e >> 8) & 7u) * 13u; }   // its scales' uvec4
uint q6_pair(uint e) { return q6_body(e) + 1u + ((e >> 6) & 3u) * 3u; }      // chunk pair's first uvec4
uint chunk_qs(uint e) { return q6_pair(e) + ((e >> 5) & 1u); }
uint chunk_plane2(uint e) { return (q6_pair(e) + 2u) * 2u + ((e >> 5) & 1u); }

#define HEAD_CHUNKS 8u
struct Head { uvec4 scales; float d; };  // a block's 16 scales and its d

Head load_head(uint e) {
    uint block = (e >> 8) & 7u;
    vec2 ds = unpackHalf2x16(w_words[(e >> 11) * 420u + (block >> 1)]);
    return Head(w_quad(q6_body(e)), (block & 1u) != 0u ? ds.y : ds.x);
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
