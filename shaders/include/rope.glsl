// The NEOX RoPE angle, reduced exactly (rope.comp's header says how). The including shader
// declares the table: readonly buffer ... { float turns_per_pos[]; }, (hi, mid, lo) per pair.

// r - round(r): the same angle in [-1/2, 1/2] turns, exactly.
float centered(float r) { return r - round(r); }

// The angle pos * (hi + mid + lo) * 2pi, reduced to [-pi, pi].
float rope_angle(uint pos, uint tab) {
    float hi = turns_per_pos[tab], mid = turns_per_pos[tab + 1], lo = turns_per_pos[tab + 2];
    uint pos_lo = pos & 0xFFFu;
    float p_hi = float(pos - pos_lo), p_lo = float(pos_lo);
    precise float r = centered(p_hi * hi);
    r = centered(r + centered(p_lo * hi));
    r = centered(r + centered(p_hi * mid));
    r = centered(r + centered(p_lo * mid));
    r = centered(r + float(pos) * lo);
    return r * 6.28318530717958648;
}
