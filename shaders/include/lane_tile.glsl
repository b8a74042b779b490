// The LANE matmul kernel's tile (shaders/matmul.comp), a function LANE_TILE for TILE_WIDTH tokens:
// matmul.comp includes it once per width it needs.
// Rows row0 .. row0 + LANE_ROWS of the weight at w_base times the tokens token[0 .. n_here);
// entries past n_here repeat a real token and are not stored.
void LANE_TILE(uint w_base, uint row0, uint token[TILE_WIDTH], uint n_here) {
    uint w_row[LANE_ROWS];            // rows past the end repeat the last row, never written
    [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
        w_row[r] = w_base + min(row0 + r, p.rows - 1) * p.n_in;
    uint x_row[TILE_WIDTH];           // in floats
    [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
        x_row[t] = p.x_off + token[t] * p.n_in;

    float acc[LANE_ROWS][TILE_WIDTH];
    [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
        [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
            acc[r][t] = 0.0;
    float ss[TILE_WIDTH];             // each token's sum of squares (NORM_IN)
    [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
        ss[t] = 0.0;
    Head head[LANE_ROWS];             // each row's current scales
    uint n_chunks = p.n_in / 32u;
    for (uint c = 0; c < n_chunks; c++) {
        vec4 xs[TILE_WIDTH][8];
        vec2 x_sum[TILE_WIDTH];       // the two halves' sums, for the chunks' offsets
        [[unroll]] for (uint i = 0; i < 8; i++) {
            vec4 w = nw4(c * 32u + 4u * i);       // read once for all the tokens
            [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
                xs[t][i] = norm_in(xq[(x_row[t] >> 2) + c * 8u + i], w, ss[t]);
        }
        [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
            x_sum[t] = vec2(hsum((xs[t][0] + xs[t][1]) + (xs[t][2] + xs[t][3])),
                            hsum((xs[t][4] + xs[t][5]) + (xs[t][6] + xs[t][7])));
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++) {
            uint e = w_row[r] + c * 32u;
            if (c == 0u || (e >> 5) % HEAD_CHUNKS == 0u)
                head[r] = load_head(e);
            vec4 q[8];
            vec4 s = chunk_quants(e, head[r], q);
            [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++) {
                vec4 lo = q[0] * xs[t][0], hi = q[4] * xs[t][4];
                [[unroll]] for (uint i = 1; i < 4; i++) {
                    lo += q[i] * xs[t][i];
                    hi += q[4 + i] * xs[t][4 + i];
                }
                acc[r][t] += s.x * hsum(lo) + s.y * hsum(hi) - dot(s.zw, x_sum[t]);
            }
        }
    }
    // A tail shorter than a chunk (plain types only): 4 at a time, then one at a time.
    uint k = n_chunks * 32u;
    for (; k + 4u <= p.n_in; k += 4u) {
        vec4 xv[TILE_WIDTH];
        [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
            xv[t] = norm_in(xq[(x_row[t] + k) >> 2], nw4(k), ss[t]);
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++) {
            vec4 w = weight4_aligned(w_row[r] + k);     // rows start on 4 (LANE_ALIGN)
            [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
                acc[r][t] += dot(w, xv[t]);
        }
    }
    for (; k < p.n_in; k++) {
        float xv[TILE_WIDTH];
        [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
            xv[t] = norm_in(x1(x_row[t] + k), nw1(k), ss[t]);
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
            [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
                acc[r][t] += weight1(w_row[r] + k) * xv[t];
    }

    [[unroll]] for (uint t = 0; t < TILE_WIDTH; t++)
        [[unroll]] for (uint r = 0; r < LANE_ROWS; r++)
            if (t < n_here && row0 + r < p.rows)
                store(p.o_off + token[t] * p.o_stride + p.col0 + row0 + r, acc[r][t], ss[t]);
}
