// PLACEHOLDER, to be replaced: decoding of Q2_K, Q3_K, Q4_K, Q5_K, Q6_K blocks.
// Compiles so the shader build works; every value decodes as 0.
#define WEIGHT_BLOCK 32
float weight1(uint e) { return 0.0; }
vec4 weight4(uint e) { return vec4(0.0); }
