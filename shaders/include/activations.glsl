// Activation functions, all in F32.

float silu(float x) { return x / (1.0 + exp(-x)); }

// log(1 + e^x), with the identity above 20 as in transformers and llama.cpp.
float softplus(float x) { return x > 20.0 ? x : log(1.0 + exp(x)); }

// erf by Abramowitz & Stegun 7.1.26 is only good to 1.5e-7 absolute; GLSL has no erf.
float erf_approx(float x) {
    float s = sign(x);
    x = abs(x);
    float t = 1.0 / (1.0 + 0.3275911 * x);
    float y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
                     + 0.254829592) * t * exp(-x * x);
    return s * y;
}

// Exact (erf) GELU, as nn.GELU() in transformers; not the tanh approximation.
float gelu_erf(float x) { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)); }
