#version 450
// Element-wise ops over n floats. Binary ops broadcast b along rows: b[i % nb]. swiglu_rows
// reads rows gate | up of 2 nb floats each and writes n = rows * nb.
//! variant add OP_ADD
//! variant mul OP_MUL
//! variant scale OP_SCALE
//! variant silu OP_SILU
//! variant softplus OP_SOFTPLUS
//! variant gelu OP_GELU
//! variant swiglu OP_SWIGLU
//! variant swiglu_rows OP_SWIGLU_ROWS
#include "common.glsl"
#include "activations.glsl"
layout(local_size_x = 256) in;

#if defined(OP_ADD) || defined(OP_MUL) || defined(OP_SWIGLU)
#define N_IN 2
#else
#define N_IN 1
#endif

layout(binding = 0) readonly buffer A { float a[]; };
#if N_IN >= 2
layout(binding = 1) readonly buffer B { float b[]; };
#endif
layout(binding = N_IN) writeonly buffer Out { float o[]; };

// a_off/b_off/w_off/o_off in floats; nb = length of the broadcast operand(s); s = scale factor.
layout(push_constant) uniform P { uint n; uint a_off; uint b_off; uint w_off; uint o_off; uint nb; float s; } p;

void main() {
    uint i = GLOBAL_INDEX;
    if (i >= p.n) return;
#if defined(OP_SWIGLU_ROWS)
    uint gate = p.a_off + (i / p.nb) * 2u * p.nb + i % p.nb;
    float x = a[gate];
#else
    float x = a[p.a_off + i];
#endif
#if defined(OP_ADD)
    float y = x + b[p.b_off + i % p.nb];
#elif defined(OP_MUL)
    float y = x * b[p.b_off + i % p.nb];
#elif defined(OP_SCALE)
    float y = x * p.s;
#elif defined(OP_SILU)
    float y = silu(x);
#elif defined(OP_SOFTPLUS)
    float y = softplus(x);
#elif defined(OP_GELU)
    float y = gelu_erf(x);
#elif defined(OP_SWIGLU)
    float y = silu(x) * b[p.b_off + i % p.nb];
#elif defined(OP_SWIGLU_ROWS)
    float y = silu(x) * a[gate + p.nb];
#endif
    o[p.o_off + i] = y;
}
