// Byte-level reads from the weight buffer `w_words[]` (declared by weights.glsl before this is
// included). GGUF blocks are 18, 20, 22, 34, 84, 110 or 210 bytes long, so their fields sit at
// any byte address; these read them little-endian from the 32-bit words.
#ifndef BYTES_GLSL
#define BYTES_GLSL

uint read_u8(uint byte_addr) {
    return (w_words[byte_addr >> 2] >> ((byte_addr & 3u) * 8u)) & 0xFFu;
}

// Little-endian u16 at any byte address (may straddle two words).
uint read_u16(uint byte_addr) {
    uint shift = (byte_addr & 3u) * 8u;
    uint word = byte_addr >> 2;
    if (shift <= 16u)
        return (w_words[word] >> shift) & 0xFFFFu;
    return (w_words[word] >> 24) | ((w_words[word + 1] & 0xFFu) << 8);
}

// Little-endian u32 at any byte address. Branch-free (neighbouring threads read blocks of
// different alignments): always two word reads, the second clamped to the buffer so an aligned
// read of the last word stays inside it (its bits are shifted out then).
uint read_u32_unaligned(uint byte_addr) {
    uint shift = (byte_addr & 3u) * 8u;
    uint word = byte_addr >> 2;
    uint next = w_words[min(word + 1u, uint(w_words.length()) - 1u)];
    return (w_words[word] >> shift) | ((next << 1) << (31u - shift));
}

// fp16 at any byte address, as f32.
float read_f16(uint byte_addr) {
    return unpackHalf2x16(read_u16(byte_addr)).x;
}

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
