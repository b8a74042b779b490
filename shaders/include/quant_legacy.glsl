// GGUF legacy 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (one per compile, by WTYPE_*), in
// their device layouts (vkinfer/gpu/tensor.py): superblocks of 8 blocks, field by field, so
// every field is aligned words, the scales first:
//   Q8_0: the 8 fp16 d in 4 words, then 64 words of quants (a block's 32 in 8 words).
//   Q4_0, Q4_1, Q5_0, Q5_1: the 8 fp16 d (Q4_0, Q5_0: 4 words) or the 8 (d, m) pairs (Q4_1,
//   Q5_1: 8 words), then 8 nibble chunks (nibbles.glsl) and, for Q5_*, 8 1-bit planes (Q5_0's
//   before the chunks).
// Values are computed as gguf-py's dequantizer does, in f32: d * q, and for the _1 types
// (d * q) + m rounded twice (`precise` stops the compiler fusing them into an fma).
#include "bytes.glsl"

#define WEIGHT_BLOCK 32

// Signed bytes of a word, lowest first.
ivec4 word_i8(uint word) {
    return ivec4(int(word) << 24, int(word) << 16, int(word) << 8, int(word)) >> 24;
}

// The fp16 d of chunk e >> 5 from its superblock's 8, in 4 words.
float head_d(uvec4 d, uint e) {
    uint k = (e >> 5) & 7u;
    vec2 both = unpackHalf2x16(pick(d, k >> 1));
    return (k & 1u) != 0u ? both.y : both.x;
}

#define HEAD_CHUNKS 8u

#if defined(WTYPE_Q8_0)
#define Q8_SUPER_WORDS 68u
#define Q8_QUANTS_AT 4u
struct Head { uvec4 d; };
Head load_head(uint e) { return Head(w_quad((e >> 8) * (Q8_SUPER_WORDS / 4u))); }

// The scale of element e's block.
float q8_scale(uint e) {
    uint word = w_words[(e >> 8) * Q8_SUPER_WORDS + ((e & 255u) >> 6)];
    vec2 both = unpackHalf2x16(word);
    return (e & 32u) != 0u ? both.y : both.x;
}

vec4 weight4(uint e) {
    return vec4(word_i8(w_words[(e >> 8) * Q8_SUPER_WORDS + Q8_QUANTS_AT + ((e & 255u) >> 2)])) * q8_scale(e);
}

#else
#if defined(WTYPE_Q4_0)
#define SUPER_WORDS 36u
#define QS_WORD 4u
#define Q_OFFSET 8.0
#elif defined(WTYPE_Q4_1)
#define SUPER_WORDS 40u
#define QS_WORD 8u
#define Q_OFFSET 0.0
#define WITH_MIN
#elif defined(WTYPE_Q5_0)
#define SUPER_WORDS 44u
#define QS_WORD 12u
#define P1_WORD 4u
#define PLANE1_AT 4
#define Q_OFFSET 16.0
#elif defined(WTYPE_Q5_1)
#define SUPER_WORDS 48u
#define QS_WORD 8u
#define P1_WORD 40u
#define PLANE1_AT 4
#define Q_OFFSET 0.0
#define WITH_MIN
#endif

// The scales at word 0 of a superblock, its nibble chunks at word QS_WORD, its 1-bit planes at P1_WORD.
uint chunk_qs(uint e) { return (e >> 8) * (SUPER_WORDS / 4u) + QS_WORD / 4u + ((e >> 5) & 7u); }
#ifdef P1_WORD
uint chunk_plane1(uint e) { return (e >> 8) * SUPER_WORDS + P1_WORD + ((e >> 5) & 7u); }
#endif

#if defined(WITH_MIN)
struct Head { uvec4 dm[2]; };           // (d, m) of the superblock's 8 blocks
Head load_head(uint e) {
    uint quad = (e >> 8) * (SUPER_WORDS / 4u);
    return Head(uvec4[2](w_quad(quad), w_quad(quad + 1u)));
}

vec4 head_scales(Head head, uint e) {
    uint k = (e >> 5) & 7u;
    vec2 dm = unpackHalf2x16(pick(k < 4u ? head.dm[0] : head.dm[1], k & 3u));
    return vec4(dm.xx, -dm.yy);                     // (d * q) - (-m) = (d * q) + m exactly
}
#else
struct Head { uvec4 d; };               // d of the superblock's 8 blocks
Head load_head(uint e) { return Head(w_quad((e >> 8) * (SUPER_WORDS / 4u))); }

vec4 head_scales(Head head, uint e) {
    float d = head_d(head.d, e);
    return vec4(d, d, 0.0, 0.0);
}
#endif

#include "nibbles.glsl"
#endif

// Only reached for a row tail shorter than 4, which a block type never has; kept for callers.
float weight1(uint e) {
    return weight4(e & ~3u)[e & 3u];
}
