// Weight decoding: one weight type per compile, chosen by WTYPE_F32, WTYPE_F16 or WTYPE_BF16.
//
// Weights are bound as `uint` words (binding W_BINDING, 0 unless the shader says otherwise) and
// addressed in ELEMENTS from the start of the buffer, never in words: a row of F16/BF16 may
// start in the middle of a word. Each type provides
//
//   WEIGHT_BLOCK       elements per block; a row's length is a multiple of it (1 for plain types)
//   vec4 weight4(e)    elements e..e+3. For a block type e is a multiple of 4 counted from a
//                      block-aligned row start, so the 4 elements never straddle two blocks.
//   float weight1(e)   element e alone: the tail of a row whose length is not a multiple of 4.
//
// Matmul kernels decode 4 elements at a time with weight4 and multiply them with one or many
// tokens of x, so a GGUF block type (Q4_0 ... Q6_K) is one more #elif here: decode the 4
// consecutive elements of its block in place (every block format stores them in a few
// neighbouring bytes), reading the block's scales as it goes.
#ifndef W_BINDING
#define W_BINDING 0
#endif
layout(binding = W_BINDING) readonly buffer Weights { uint w_words[]; };

#if defined(WTYPE_F32)
#define WEIGHT_BLOCK 1

float weight1(uint e) { return uintBitsToFloat(w_words[e]); }

vec4 weight4(uint e) {
    return uintBitsToFloat(uvec4(w_words[e], w_words[e + 1], w_words[e + 2], w_words[e + 3]));
}

#elif defined(WTYPE_F16)
#define WEIGHT_BLOCK 1

float weight1(uint e) {
    vec2 pair = unpackHalf2x16(w_words[e >> 1]);
    return (e & 1u) == 0u ? pair.x : pair.y;
}

vec4 weight4(uint e) {
    uint i = e >> 1;
    vec2 a = unpackHalf2x16(w_words[i]);
    vec2 b = unpackHalf2x16(w_words[i + 1]);
    if ((e & 1u) == 0u)
        return vec4(a, b);
    return vec4(a.y, b, unpackHalf2x16(w_words[i + 2]).x);
}

#elif defined(WTYPE_BF16)
#define WEIGHT_BLOCK 1

// A BF16 value is the top half of an F32; element 2i is the low half of word i.
float bf16_low(uint word) { return uintBitsToFloat(word << 16); }
float bf16_high(uint word) { return uintBitsToFloat(word & 0xFFFF0000u); }

float weight1(uint e) {
    uint word = w_words[e >> 1];
    return (e & 1u) == 0u ? bf16_low(word) : bf16_high(word);
}

vec4 weight4(uint e) {
    uint i = e >> 1;
    uint a = w_words[i], b = w_words[i + 1];
    if ((e & 1u) == 0u)
        return vec4(bf16_low(a), bf16_high(a), bf16_low(b), bf16_high(b));
    return vec4(bf16_high(a), bf16_low(b), bf16_high(b), bf16_low(w_words[i + 2]));
}

#elif defined(WTYPE_Q4_0) || defined(WTYPE_Q4_1) || defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1) || \
      defined(WTYPE_Q8_0)
#include "quant_legacy.glsl"

#elif defined(WTYPE_Q2_K) || defined(WTYPE_Q3_K) || defined(WTYPE_Q4_K) || defined(WTYPE_Q5_K) || \
      defined(WTYPE_Q6_K)
#include "quant_k.glsl"

#else
#error "define one of the WTYPE_* weight types"
#endif

// Wide views of the same weight words, for the loads below.
layout(binding = W_BINDING) readonly buffer WeightQuads { uvec4 w_quads[]; };
layout(binding = W_BINDING) readonly buffer WeightPairs { uvec2 w_pairs[]; };

// weight4(e) in one load, e a multiple of 4 (for F32 and F16; other types as weight4).
vec4 weight4_aligned(uint e) {
#if defined(WTYPE_F32)
    return uintBitsToFloat(w_quads[e >> 2]);
#elif defined(WTYPE_F16)
    uvec2 q = w_pairs[e >> 2];
    return vec4(unpackHalf2x16(q.x), unpackHalf2x16(q.y));
#else
    return weight4(e);
#endif
}

// The 32 elements e..e+31 are scale * w[0..7], e a multiple of 32 (of 8 for F16, of 4 for
// F32) from the start of the buffer; returns the scale. Types whose chunks lie in aligned words
// read them in uvec4s, the widest load there is (llvmpipe pays per load, not per byte); the
// others go through weight4 (scale 1).
float weight_chunk(uint e, out vec4 w[8]) {
#if defined(WTYPE_F32)
    [[unroll]] for (uint i = 0; i < 8; i++)
        w[i] = uintBitsToFloat(w_quads[(e >> 2) + i]);
    return 1.0;
#elif defined(WTYPE_F16)
    [[unroll]] for (uint i = 0; i < 4; i++) {
        uvec4 q = w_quads[(e >> 3) + i];
        w[2 * i] = vec4(unpackHalf2x16(q.x), unpackHalf2x16(q.y));
        w[2 * i + 1] = vec4(unpackHalf2x16(q.z), unpackHalf2x16(q.w));
    }
    return 1.0;
#elif defined(WTYPE_Q8_0)
    uint quad = ((e >> 8) * Q8_SUPER_WORDS + ((e & 255u) >> 2)) >> 2;
    [[unroll]] for (uint i = 0; i < 2; i++) {
        uvec4 q = w_quads[quad + i];
        w[4 * i] = vec4(word_i8(q.x));
        w[4 * i + 1] = vec4(word_i8(q.y));
        w[4 * i + 2] = vec4(word_i8(q.z));
        w[4 * i + 3] = vec4(word_i8(q.w));
    }
    return q8_scale(e);
#elif defined(WTYPE_Q4_K) || defined(WTYPE_Q5_K)
    // Blocks of 144 / 176 bytes are whole uvec4s: the header (d, dmin, 12 scale bytes), for
    // Q5_K the 32 qh bytes, then the 32 quant bytes that sub-block j shares with j ^ 1.
    uint quad = (e >> 8) * (BLOCK_BYTES / 16u), j = (e & 255u) >> 5;
    uvec4 head = w_quads[quad];
    uvec2 sm = scale_min_of(head.yzw, j);
    vec2 d = unpackHalf2x16(head.x);
    float scale = d.x * float(sm.x), minimum = d.y * float(sm.y);
    uint qs = quad + QS_AT / 16u + (j >> 1) * 2u;
#if defined(WTYPE_Q5_K)
    uvec4 qh[2] = uvec4[2](w_quads[quad + 1u], w_quads[quad + 2u]);
#endif
    [[unroll]] for (uint h = 0; h < 2; h++) {
        uvec4 q = w_quads[qs + h];
        [[unroll]] for (uint k = 0; k < 4; k++) {
#if defined(WTYPE_Q5_K)
            uint high = qh[h][k];
#else
            uint high = 0u;
#endif
            w[4 * h + k] = k_quant4(q[k], high, j, scale, minimum);
        }
    }
    return 1.0;
#elif defined(WTYPE_Q6_K)
    // Chunk c of a block (i = 32c + l, n = c / 4): ql bytes 64n + 32(c % 2) + l, nibble c / 2 % 2;
    // qh bytes 32n + l, bits 2(c % 4); scales 2c and 2c + 1 (one per 16 elements).
    uint body = q6_body(e) >> 4, c = (e & 255u) >> 5, n = c >> 2;
    uint nibble = 4u * ((c >> 1) & 1u), pair = 2u * (c & 3u);
    uint scale_word = w_quads[body + 12u][c >> 1] >> (16u * (c & 1u));
    float d = read_f16(q6_d_at(e));
    [[unroll]] for (uint h = 0; h < 2; h++) {
        uvec4 low = w_quads[body + 4u * n + 2u * (c & 1u) + h];
        uvec4 high = w_quads[body + 8u + 2u * n + h];
        float scale = d * float(bitfieldExtract(int(scale_word), 8 * int(h), 8));
        [[unroll]] for (uint k = 0; k < 4; k++)
            w[4 * h + k] = q6_quant4(low[k] >> nibble, high[k] >> pair, scale);
    }
    return 1.0;
#else
    [[unroll]] for (uint i = 0; i < 8; i++)
        w[i] = weight4(e + 4 * i);
    return 1.0;
#endif
}
