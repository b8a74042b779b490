// Chunks of 32 elements in bit planes (vkinfer/gpu/tensor.py): the device layout of Q4_0, Q4_1,
// Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K. Element 16h + 4c + b of a chunk (group (h, c),
// byte lane b) takes its bits from up to three aligned planes:
//   nibbles  one uvec4: byte 4c + b, low nibble for h = 0, high nibble for h = 1 (so word c
//            shifted by 4h holds group (h, c) in its 4 bytes). Absent with NO_NIBBLES.
//   2 bits   two words (a uvec2): word h, bits 8b + 2c and 8b + 2c + 1; put at bit PLANE2_AT.
//   1 bit    one word: bit 8b + 4h + c; put at bit PLANE1_AT.
// A type including this defines Q_OFFSET, HEAD_CHUNKS, a struct Head and, for the planes it has,
//   uint chunk_qs(e)      the uvec4 index of the nibbles of the chunk holding element e
//   uint chunk_plane2(e)  the uvec2 index of its 2-bit plane
//   uint chunk_plane1(e)  the word index of its 1-bit plane
//   Head load_head(e)     the scales of the HEAD_CHUNKS chunks around e, as loaded
//   vec4 head_scales(head, e)  (a_0, a_1, b_0, b_1): element 16h + i of e's chunk is
//                         a_h * (q - Q_OFFSET) - b_h, in gguf-py's float32 order.
#define NIBBLE_CHUNKS

// The planes of element e's chunk as locals qs, p2, p1 (zeros where the type has none).
#ifndef NO_NIBBLES
#define LOAD_QS(e) uvec4 qs = w_quad(chunk_qs(e))
#else
#define LOAD_QS(e) uvec4 qs = uvec4(0u)
#endif
#ifdef PLANE2_AT
#define LOAD_P2(e) uvec2 p2 = w_pair(chunk_plane2(e))
#else
#define LOAD_P2(e) uvec2 p2 = uvec2(0u)
#endif
#ifdef PLANE1_AT
#define LOAD_P1(e) uint p1 = w_words[chunk_plane1(e)]
#else
#define LOAD_P1(e) uint p1 = 0u
#endif

// The bits of group (h, c), one value per byte, from the chunk's nibble word c and its planes.
uint group_bits(uint qs_word, uvec2 p2, uint p1, uint h, uint c) {
    uint bits = 0u;
#ifndef NO_NIBBLES
    bits = (qs_word >> (4u * h)) & EACH_BYTE(0xFu);
#endif
#ifdef PLANE2_AT
    bits |= ((p2[h] >> (2u * c)) & EACH_BYTE(3u)) << PLANE2_AT;
#endif
#ifdef PLANE1_AT
    bits |= ((p1 >> (4u * h + c)) & EACH_BYTE(1u)) << PLANE1_AT;
#endif
    return bits;
}

vec4 weight4(uint e) {
    uint h = (e >> 4) & 1u, c = (e >> 2) & 3u;
#ifndef NO_NIBBLES
    uint qs_word = w_words[4u * chunk_qs(e) + c];
#else
    uint qs_word = 0u;
#endif
    LOAD_P2(e);
    LOAD_P1(e);
    vec4 s = head_scales(load_head(e), e);
    precise vec4 y = s[h] * (bytes4(group_bits(qs_word, p2, p1, h, c)) - Q_OFFSET) - s[2u + h];
    return y;
}

// The chunk of element e (a multiple of 32) from its planes, for a dot product: q[4h + c] =
// group (h, c) as raw quants; returns (a_0, a_1, c_0, c_1), element 16h + i being a_h * q - c_h.
vec4 planes_chunk(uvec4 qs, uvec2 p2, uint p1, uint e, Head head, out vec4 q[8]) {
    [[unroll]] for (uint h = 0; h < 2; h++)
        [[unroll]] for (uint c = 0; c < 4; c++)
            q[4 * h + c] = bytes4(group_bits(qs[c], p2, p1, h, c));
    vec4 s = head_scales(head, e);
    return vec4(s.xy, s.xy * Q_OFFSET + s.zw);
}

vec4 nibble_chunk(uint e, Head head, out vec4 q[8]) {
    LOAD_QS(e);
    LOAD_P2(e);
    LOAD_P1(e);
    return planes_chunk(qs, p2, p1, e, head, q);
}

#if defined(CHUNK_PAIRS) && defined(WIDE64)
// A layout with CHUNK_PAIRS keeps the nibbles of chunks 2k and 2k + 1 in one aligned 32-byte unit
// and their 1-bit planes (if any) in one 64-bit word; no 2-bit planes. The CPU-device kernels
// load both chunks at once: llvmpipe pays per loaded component and lane, so one u64vec4 instead
// of two u64vec2s.
struct ChunkPair { uvec4 qs[2]; uvec2 p1; };

ChunkPair load_chunk_pair(uint e) {          // e: the first element of chunk 2k
    u64vec4 both = w_octs[chunk_qs(e) >> 1];
#ifdef PLANE1_AT
    uvec2 p1 = w_pair(chunk_plane1(e) >> 1);
#else
    uvec2 p1 = uvec2(0u);
#endif
    return ChunkPair(uvec4[2](quad_of(both.xy), quad_of(both.zw)), p1);
}

// nibble_chunk of the pair's chunk k (element e its first).
vec4 pair_chunk(ChunkPair pair, uint k, uint e, Head head, out vec4 q[8]) {
    return planes_chunk(pair.qs[k], uvec2(0u), pair.p1[k], e, head, q);
}
#endif
