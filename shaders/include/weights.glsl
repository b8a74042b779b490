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
// and, for the matmul kernels, 32-element chunks of raw quants with their scales (weight_chunk,
// chunk_quants below), the scales taken from a Head that a kernel loads once per HEAD_CHUNKS
// chunks (a superblock's scales, or a K-quant block's).
#ifndef W_BINDING
#define W_BINDING 0
#endif
layout(binding = W_BINDING) readonly buffer Weights { uint w_words[]; };
// Wide views of the same weight words: w_quad(i) is words 4i..4i+3, w_pair(i) words 2i, 2i+1;
// in 64-bit words where the kernel defines WIDE64 (its CPU-device variants).
#ifdef WIDE64
#include "wide_loads.glsl"
layout(binding = W_BINDING) readonly buffer WeightQuads { u64vec2 w_quads[]; };
layout(binding = W_BINDING) readonly buffer WeightPairs { uint64_t w_pairs[]; };
layout(binding = W_BINDING) readonly buffer WeightOcts { u64vec4 w_octs[]; };   // words 8i..8i+7
uvec4 w_quad(uint i) { return quad_of(w_quads[i]); }
uvec2 w_pair(uint i) { return unpackUint2x32(w_pairs[i]); }
#else
layout(binding = W_BINDING) readonly buffer WeightQuads { uvec4 w_quads[]; };
layout(binding = W_BINDING) readonly buffer WeightPairs { uvec2 w_pairs[]; };
uvec4 w_quad(uint i) { return w_quads[i]; }
uvec2 w_pair(uint i) { return w_pairs[i]; }
#endif

#ifndef CHUNKS_ALIGNED
#define CHUNKS_ALIGNED false          // a kernel's rows all start on 256 elements (matmul.comp)
#endif

#if defined(WTYPE_F32)
#define WEIGHT_BLOCK 1
#define ELEMS_PER_WORD 1              // elements per 32-bit word

float weight1(uint e) { return uintBitsToFloat(w_words[e]); }

vec4 weight4(uint e) {
    return uintBitsToFloat(uvec4(w_words[e], w_words[e + 1], w_words[e + 2], w_words[e + 3]));
}

#elif defined(WTYPE_F16)
#define WEIGHT_BLOCK 1
#define ELEMS_PER_WORD 2

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

#ifndef HEAD_CHUNKS
// Types whose chunks carry their own scales (or none).
#define HEAD_CHUNKS 1u
struct Head { uint unused; };
Head load_head(uint e) { return Head(0u); }
#endif


// weight4(e) in one load, e a multiple of 4 (for F32 and F16; other types as weight4).
vec4 weight4_aligned(uint e) {
#if defined(WTYPE_F32)
    return uintBitsToFloat(w_quad(e >> 2));
#elif defined(WTYPE_F16)
    uvec2 q = w_pair(e >> 2);
    return vec4(unpackHalf2x16(q.x), unpackHalf2x16(q.y));
#else
    return weight4(e);
#endif
}

// The 32 elements e..e+31 (e a multiple of 32; of 8 for F16, of 4 for F32, from the start of the
// buffer) for a dot product, `head` being load_head(e'), e' the first element of the span of
// HEAD_CHUNKS chunks holding e (chunk e >> 5 with (e >> 5) % HEAD_CHUNKS == 0) or any later
// element of it: element 16h + i is a_h * q[(16h + i) / 4][i % 4] - c_h, and the result is
// (a_0, a_1, c_0, c_1), so a kernel multiplies raw quants by x and applies the scales and offsets
// (c_h times the sum of x) once per half chunk. Every type with an aligned device layout reads
// its chunk in 16-byte loads (w_quad; llvmpipe pays per loaded component, not per byte), F32 and
// F16 in 32-byte loads where the kernel's rows allow (CHUNKS_ALIGNED), Q4_K and Q5_K two chunks
// at once (nibbles.glsl load_chunk_pair); the others go through weight4.
vec4 chunk_quants(uint e, Head head, out vec4 q[8]) {
#if defined(WTYPE_F32) || defined(WTYPE_F16)
    uvec4 w[8 / ELEMS_PER_WORD];      // the chunk's words in 16-byte units
#ifdef WIDE64
    if (CHUNKS_ALIGNED) {             // e a multiple of 8 (F32) or 16 (F16): 32-byte loads
        [[unroll]] for (uint i = 0; i < 4 / ELEMS_PER_WORD; i++) {
            u64vec4 both = w_octs[(e >> (3 + ELEMS_PER_WORD / 2)) + i];
            w[2 * i] = quad_of(both.xy);
            w[2 * i + 1] = quad_of(both.zw);
        }
    } else
#endif
    {
        [[unroll]] for (uint i = 0; i < 8 / ELEMS_PER_WORD; i++)
            w[i] = w_quad((e >> (2 + ELEMS_PER_WORD / 2)) + i);
    }
    [[unroll]] for (uint i = 0; i < 8 / ELEMS_PER_WORD; i++) {
#if defined(WTYPE_F32)
        q[i] = uintBitsToFloat(w[i]);
#else
        q[2 * i] = vec4(unpackHalf2x16(w[i].x), unpackHalf2x16(w[i].y));
        q[2 * i + 1] = vec4(unpackHalf2x16(w[i].z), unpackHalf2x16(w[i].w));
#endif
    }
    return vec4(1.0, 1.0, 0.0, 0.0);
#elif defined(WTYPE_Q8_0)
    uint quad = ((e >> 8) * Q8_SUPER_WORDS + Q8_QUANTS_AT + ((e & 255u) >> 2)) >> 2;
    [[unroll]] for (uint i = 0; i < 2; i++) {
        uvec4 w = w_quad(quad + i);
        [[unroll]] for (uint k = 0; k < 4; k++)
            q[4 * i + k] = vec4(word_i8(w[k]));
    }
    float d = head_d(head.d, e);
    return vec4(d, d, 0.0, 0.0);
#elif defined(NIBBLE_CHUNKS)
    return nibble_chunk(e, head, q);
#else
    [[unroll]] for (uint i = 0; i < 8; i++)
        q[i] = weight4(e + 4 * i);
    return vec4(1.0, 1.0, 0.0, 0.0);
#endif
}

// chunk_quants with its own head.
vec4 weight_chunk(uint e, out vec4 q[8]) {
    return chunk_quants(e, load_head(e), q);
}
