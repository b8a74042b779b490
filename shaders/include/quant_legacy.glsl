// PLACEHOLDER, to be replaced: decoding of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 blocks.
// Compiles so the shader build works; every value decodes as 0.
#define WEIGHT_BLOCK 32
float weight1(uint e) { return 0.0; }
vec4 weight4(uint e) { return vec4(0.0); }
