"""Element-wise ops on contiguous F32 tensors: add, mul (b broadcast along rows), scale,
silu, softplus, gelu (erf), swiglu (of two tensors, or of each row's halves); the twin of
ZAYA's per-channel residual scaling (h + b) * w (the model's runs inside norm.merge_norm)."""
from math import ceil, erf

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, require

WG = 256


def _out(g: Graph, like: Tensor, out: Tensor | None, op: str) -> Tensor:
    if out is None:
        return g.dev.empty(like.shape, "f32")
    check_tensor(op, "out", out, dtype="f32")
    require(out.numel == like.numel, f"{op}: out has {out.numel} elements, input {like.numel}")
    return out


def _broadcast(op: str, a: Tensor, b: Tensor):
    check_tensor(op, "b", b, dtype="f32")
    require(b.numel > 0 and a.numel % b.numel == 0 and a.shape[a.ndim - b.ndim:] == b.shape,
            f"{op}: b of shape {b.shape} does not broadcast along the rows of a {a.shape}")


def _dispatch(g, variant, ins, out, nb=1, s=0.0):
    a = ins[0]
    offs = [t.offset for t in ins[1:]] + [0] * (3 - len(ins))
    g.dispatch(f"elementwise.{variant}", ins, [out],
               [a.numel, a.offset, offs[0], offs[1], out.offset, nb, float(s)], ceil(a.numel / WG))
    return out


def binary(g: Graph, variant: str, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    check_tensor(variant, "a", a, dtype="f32")
    _broadcast(variant, a, b)
    out = _out(g, a, out, variant)
    return _dispatch(g, variant, [a, b], out, nb=b.numel)


def unary(g: Graph, variant: str, a: Tensor, out: Tensor | None = None, s: float = 0.0) -> Tensor:
    check_tensor(variant, "a", a, dtype="f32")
    return _dispatch(g, variant, [a], _out(g, a, out, variant), s=s)


def add(g, a, b, out=None): return binary(g, "add", a, b, out)
def mul(g, a, b, out=None): return binary(g, "mul", a, b, out)
def swiglu(g, gate, up, out=None):
    """silu(gate) * up, same shapes."""
    require(gate.shape == up.shape, f"swiglu: gate {gate.shape} and up {up.shape} differ")
    return binary(g, "swiglu", gate, up, out)


def swiglu_rows(g: Graph, gate_up: Tensor, out: Tensor | None = None) -> Tensor:
    """silu(gate) * up of each row gate | up of gate_up [T, 2n] (a stacked projection's
    output) into out [T, n], with no copy of the halves."""
    check_tensor("swiglu_rows", "gate_up", gate_up, dtype="f32")
    require(gate_up.ndim == 2 and gate_up.shape[1] % 2 == 0 and gate_up.numel > 0,
            f"swiglu_rows: gate_up has shape {gate_up.shape}, expected [T, 2n]")
    T, n = gate_up.shape[0], gate_up.shape[1] // 2
    if out is None:
        out = g.dev.empty((T, n), "f32")
    else:
        check_tensor("swiglu_rows", "out", out, dtype="f32", shape=(T, n))
    g.dispatch("elementwise.swiglu_rows", [gate_up], [out], [T * n, gate_up.offset, 0, 0, out.offset, n, 0.0],
               ceil(T * n / WG))
    return out


def scale(g, a, s: float, out=None): return unary(g, "scale", a, out, s)
def silu(g, a, out=None): return unary(g, "silu", a, out)
def softplus(g, a, out=None): return unary(g, "softplus", a, out)
def gelu(g, a, out=None): return unary(g, "gelu", a, out)


# ---- numpy twins -------------------------------------------------------------------------------
def add_ref(a, b): return (a + b).astype(np.float32)
def mul_ref(a, b): return (a * b).astype(np.float32)
def scale_ref(a, s): return (a * np.float32(s)).astype(np.float32)
def silu_ref(a): return (a / (1.0 + np.exp(-a.astype(np.float64)))).astype(np.float32)
def softplus_ref(a):
    a64 = a.astype(np.float64)
    return np.where(a64 > 20.0, a64, np.log1p(np.exp(np.minimum(a64, 20.0)))).astype(np.float32)
def gelu_ref(a):
    verf = np.vectorize(erf)
    return (0.5 * a * (1.0 + verf(a.astype(np.float64) / np.sqrt(2.0)))).astype(np.float32)
def swiglu_ref(gate, up): return (silu_ref(gate) * up).astype(np.float32)
def swiglu_rows_ref(gate_up): return swiglu_ref(*np.split(gate_up, 2, axis=-1))
def res_scale_ref(h, bias, weight): return ((h + bias) * weight).astype(np.float32)
