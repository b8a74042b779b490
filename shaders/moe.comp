#version 450
// Top-1 MoE output (zaya1.md §3.3 steps 7-8): each token's chosen expert output h [T, n] scaled
// by the router probability of its slot, probs [T, E + 1] with slot E the skip slot. A token
// whose slot is E (or beyond) gets the skip behaviour: 0 (`zero`), or its MoE input x scaled by
// probs[t, E] (`identity`). One invocation per element, so o may be h itself.
//! variant zero
//! variant identity SKIP_IDENTITY
//! variant tiles EXPERT_TILES
// `tiles`: a prompt chunk's tokens grouped by expert for matmul_id's grouped LANE kernel: tile k
// of the table is (slot, n, token_0 .. token_{tile-1}), the slots in order (expert 0 .. E - 1,
// then the skip slot E for any id >= E), each slot's tokens in order `tile` at a time,
// a short tile padded with its last token; tiles past the last are (NO_TILE, 0, 0, ...). One
// invocation, counting sort: llvmpipe runs shared memory with barriers as coroutines, and the
// table is small. llvmpipe also ends an invocation silently after 65535 loop iterations in all,
// so the host bounds tokens and slots (ops.moe.MAX_TILED_TOKENS, MAX_SLOTS): about 3.1 T + 19 S.
#include "common.glsl"
#ifdef EXPERT_TILES
#define NO_TILE 0xFFFFFFFFu
#define MAX_SLOTS 1024u
layout(local_size_x = 1) in;
layout(binding = 0) readonly buffer Ids { uint expert_ids[]; };
layout(binding = 1) writeonly buffer Tiles { uint tiles[]; };
layout(push_constant) uniform P { uint n; uint experts; uint id_off; uint o_off; uint n_tiles; uint tile; } p;

shared uint count[MAX_SLOTS];         // a slot's tokens, then how many of them are placed
shared uint first[MAX_SLOTS];         // its first tile
shared uint last[MAX_SLOTS];          // its last token

uint slot_of(uint t) { return min(expert_ids[p.id_off + t], p.experts); }
uint word(uint tile, uint i) { return p.o_off + tile * (2u + p.tile) + i; }

void main() {
    uint n_slots = p.experts + 1u;
    for (uint s = 0; s < n_slots; s++)
        count[s] = 0u;
    for (uint t = 0; t < p.n; t++)
        count[slot_of(t)]++;
    uint k = 0;                       // tiles so far; the headers
    for (uint s = 0; s < n_slots; s++) {
        first[s] = k;
        for (uint j = 0; j < count[s]; j += p.tile, k++) {
            tiles[word(k, 0u)] = s;
            tiles[word(k, 1u)] = min(p.tile, count[s] - j);
        }
        count[s] = 0u;
    }
    for (uint t = 0; t < p.n; t++) {  // the tokens, in order within each slot
        uint s = slot_of(t), at = count[s]++;
        tiles[word(first[s] + at / p.tile, 2u + at % p.tile)] = t;
        last[s] = t;
    }
    for (uint s = 0; s < n_slots; s++) {
        uint short_tile = first[s] + count[s] / p.tile;
        for (uint f = count[s] % p.tile; f > 0u && f < p.tile; f++)
            tiles[word(short_tile, 2u + f)] = last[s];
    }
    for (; k < p.n_tiles; k++) {
        tiles[word(k, 0u)] = NO_TILE;
        for (uint i = 1u; i < (2u + p.tile); i++)
            tiles[word(k, i)] = 0u;
    }
}
#else
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer H { float h[]; };
layout(binding = 1) readonly buffer Probs { float probs[]; };
layout(binding = 2) readonly buffer Ids { uint expert_ids[]; };
#ifdef SKIP_IDENTITY
layout(binding = 3) readonly buffer X { float x[]; };
layout(binding = 4) writeonly buffer Out { float o[]; };
#else
layout(binding = 3) writeonly buffer Out { float o[]; };
#endif

// n = T * cols; skip = E (the skip slot's column; probs rows have E + 1); offsets in elements.
layout(push_constant) uniform P {
    uint n; uint cols; uint skip; uint h_off; uint p_off; uint id_off; uint x_off; uint o_off;
} p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
    uint t = i / p.cols;
    uint slot = min(expert_ids[p.id_off + t], p.skip);
    float prob = probs[p.p_off + t * (p.skip + 1) + slot];
    float y;
    if (slot < p.skip) {
        y = h[p.h_off + i] * prob;
    } else {
#ifdef SKIP_IDENTITY
        y = x[p.x_off + i] * prob;
#else
        y = 0.0;
#endif
    }
    o[p.o_off + i] = y;
}
#endif
