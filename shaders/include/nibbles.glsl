// Nibble chunks (vkinfer/gpu/tensor.py): the device layout of Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K
// and Q6_K. A 32-element chunk's 4-bit quants are one aligned uvec4: byte 4c + b of it holds
// element 4c + b in its low nibble (h = 0) and element 16 + 4c + b in its high one (h = 1), so
// word c, shifted by 4h, holds group (h, c), elements 16h + 4c .. 16h + 4c + 3, in its 4 bytes.
// Their bit 4 (NIB_HIGH 1) is a 1-bit plane, one word: bit 8b + 4h + c for element
// 16h + 4c + b; their bits 4-5 (NIB_HIGH 2, Q6_K) a 2-bit plane, two words: word h, bits
// 8b + 2c and up. A type including this defines NIB_HIGH, Q_OFFSET, HEAD_CHUNKS, a struct Head
// and
//   uint chunk_qs(e)      the uvec4 index of the quants of the chunk holding element e
//   uint chunk_high(e)    the word (NIB_HIGH 1) or uvec2 (NIB_HIGH 2) index of its plane
//   Head load_head(e)     the scales of the HEAD_CHUNKS chunks around e, as loaded
//   vec4 head_scales(head, e)  (a_0, a_1, b_0, b_1): element 16h + i of e's chunk is
//                         a_h * (q - Q_OFFSET) - b_h, in gguf-py's float32 order.

// The bits of group (h, c) from the chunk's quant word c and its plane, one value per byte.
uint group_bits(uint qs_word, uvec2 high, uint h, uint c) {
    uint bits = (qs_word >> (4u * h)) & EACH_BYTE(0xFu);
#if NIB_HIGH == 1
    bits |= ((high.x >> (4u * h + c)) & EACH_BYTE(1u)) << 4;
#elif NIB_HIGH == 2
    bits |= ((high[h] >> (2u * c)) & EACH_BYTE(3u)) << 4;
#endif
    return bits;
}

uvec2 chunk_plane(uint e) {
#if NIB_HIGH == 1
    return uvec2(w_words[chunk_high(e)], 0u);
#elif NIB_HIGH == 2
    return w_pairs[chunk_high(e)];
#else
    return uvec2(0u);
#endif
}

vec4 weight4(uint e) {
    uint h = (e >> 4) & 1u, c = (e >> 2) & 3u;
    uint bits = group_bits(w_words[4u * chunk_qs(e) + c], chunk_plane(e), h, c);
    vec4 s = head_scales(load_head(e), e);
    precise vec4 y = s[h] * (bytes4(bits) - Q_OFFSET) - s[2u + h];
    return y;
}

// The chunk of element e (a multiple of 32) for a dot product: q[4h + c] = group (h, c) as raw
// quants; returns (a_0, a_1, c_0, c_1), element 16h + i being a_h * q - c_h.
vec4 nibble_chunk(uint e, Head head, out vec4 q[8]) {
    uvec4 qs = w_quads[chunk_qs(e)];
    uvec2 high = chunk_plane(e);
    [[unroll]] for (uint h = 0; h < 2; h++)
        [[unroll]] for (uint c = 0; c < 4; c++)
            q[4 * h + c] = bytes4(group_bits(qs[c], high, h, c));
    vec4 s = head_scales(head, e);
    return vec4(s.xy, s.xy * Q_OFFSET + s.zw);
}
