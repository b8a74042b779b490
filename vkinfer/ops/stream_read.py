"""Streaming read, the ruler for memory bandwidth: sum the u32 words of a buffer with uvec4
loads, one wrapping u32 sum per work group. Exact, so the twin matches bit for bit."""
from math import ceil

import numpy as np

from ..gpu import Graph, Tensor, check_tensor, output, require

WG = 64            # invocations per work group (shaders/stream_read.comp)


def n_groups(n_words: int, per_thread: int) -> int:
    return ceil(n_words // 4 / (WG * per_thread))


PATTERNS = ("coalesced", "lane")    # the shader's variants: how a group's invocations split its span


def stream_read(g: Graph, src: Tensor, per_thread: int = 16, out: Tensor | None = None,
                pattern: str | None = None) -> Tensor:
    """Per-work-group sums (u32, mod 2**32) of src, u32 [n] with n and src.offset multiples of
    4 (uvec4 loads); each group reads WG * per_thread uvec4s, in the access pattern given (one
    of PATTERNS; default: lane on CPU devices, else coalesced). Returns u32 [n_groups]."""
    check_tensor("stream_read", "src", src, dtype="u32")
    require(src.numel % 4 == 0 and src.offset % 4 == 0,
            f"stream_read: src has {src.numel} words at offset {src.offset}; both must be "
            "multiples of 4 (uvec4 loads)")
    require(per_thread >= 1, f"stream_read: per_thread is {per_thread}, must be at least 1")
    pattern = pattern or ("lane" if g.dev.lane_kernels else "coalesced")
    require(pattern in PATTERNS, f"stream_read: pattern {pattern!r} is not one of {', '.join(PATTERNS)}")
    groups = n_groups(src.numel, per_thread)
    out = output(g, "stream_read", out, (groups,), "u32")
    g.dispatch(f"stream_read.{pattern}", [src], [out],
               [src.numel // 4, src.offset // 4, per_thread, out.offset], groups=groups)
    return out


# ---- numpy twin ----------------------------------------------------------------------------------
def stream_read_ref(src: np.ndarray, per_thread: int = 16) -> np.ndarray:
    words = np.asarray(src, np.uint32).reshape(-1)
    span = WG * per_thread * 4
    padded = np.zeros(n_groups(words.size, per_thread) * span, np.uint64)
    padded[:words.size] = words
    return (padded.reshape(-1, span).sum(axis=1) & 0xFFFFFFFF).astype(np.uint32)
