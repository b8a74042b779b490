"""ssm_conv and ssm_scan against their float64 numpy twins.

Error bounds, as |got - want| <= bound * max(1, |want|):
* ssm_conv: 1e-6 (a K-term F32 dot product of O(1) values; 2e-6 with silu, GPU exp);
* ssm_scan: 2e-5 (a d_state-term sum of states carried over T tokens through GPU exp;
  measured up to about 4e-6 with d_state 64).
Feeding a sequence in chunks (1, 3, rest) with the carried state must match feeding it at
once to 1e-6 (the shader does the same F32 operations per token either way)."""
import numpy as np
import pytest

from conftest import at_offset, check_scaled, run, view_then_copy
from vkinfer.gpu import Graph
from vkinfer.ops import ssm
from vkinfer.ops import copy as copy_ops

GUARD = 7.25          # sentinel around tensors placed inside bigger buffers


def guards_intact(dev, whole, before=5, after=3):
    flat = dev.read(whole)
    return np.all(flat[:before] == GUARD) and np.all(flat[flat.size - after:] == GUARD)


def conv_inputs(rng, T, C, K, S):
    return (rng.standard_normal((T, C)).astype(np.float32),
            rng.standard_normal((C, S)).astype(np.float32),
            rng.standard_normal((C, K)).astype(np.float32),
            rng.standard_normal(C).astype(np.float32))


def scan_inputs(rng, T, Dn, N):
    x = rng.standard_normal((T, Dn)).astype(np.float32)
    dt = np.log1p(np.exp(rng.standard_normal((T, Dn)) - 1.0)).astype(np.float32)   # softplus'ed
    A = -np.exp(rng.uniform(0.0, np.log(N + 1.0), (Dn, N))).astype(np.float32)     # Mamba's init range
    B = rng.standard_normal((T, N)).astype(np.float32)
    C = rng.standard_normal((T, N)).astype(np.float32)
    D = rng.standard_normal(Dn).astype(np.float32)
    state = rng.standard_normal((Dn, N)).astype(np.float32)
    z = rng.standard_normal((T, Dn)).astype(np.float32)
    return x, dt, A, B, C, D, state, z


# ---- ssm_conv ----------------------------------------------------------------------------------
@pytest.mark.parametrize("T,C,K,S,silu,bias", [
    (1, 37, 4, 3, True, True),       # Mamba decode (T < S: the state shifts through itself)
    (7, 1001, 4, 3, True, True),     # Mamba prefill chunk
    (5, 1280, 2, 2, False, True),    # ZAYA depthwise stage: T+1 outputs
    (1, 65, 2, 2, False, True),      # ZAYA decode
    (3, 65, 3, 5, False, False),     # more state than the kernel needs, no bias
    (2, 3, 1, 1, True, False),
    (3, 50, 2, 1, False, True),      # S = K - 1 with 2 taps (the register window, as K = 4)
    (4, 20, 5, 4, True, True),       # S = K - 1 past the register window: the general loop
])
def test_ssm_conv(dev, rng, T, C, K, S, silu, bias):
    x, state, w, b = conv_inputs(rng, T, C, K, S)
    b = b if bias else None
    tstate = dev.upload(state)
    out = run(dev, lambda g: ssm.ssm_conv(g, dev.upload(x), tstate, dev.upload(w),
                                          dev.upload(b) if bias else None, silu=silu))
    want, want_state = ssm.ssm_conv_ref(x, state, w, b, silu)
    assert out.shape == (T + S - K + 1, C)
    check_scaled(dev.read(out), want, 2e-6 if silu else 1e-6, f"ssm_conv T{T} C{C} K{K} S{S}")
    assert np.array_equal(dev.read(tstate), want_state)


def test_ssm_conv_at_offsets(dev, rng):
    """Every tensor inside a bigger buffer; x a column slice of a wider activation (as x1 is
    of Mamba's xz); the guard values around the state and the output stay untouched."""
    T, C, K, S = 6, 45, 4, 3
    x, state, w, b = conv_inputs(rng, T, C, K, S)
    xz = np.concatenate([x, rng.standard_normal((T, C)).astype(np.float32)], axis=1)
    txz, _ = at_offset(dev, GUARD, xz, before=9)
    tx = txz.slice(1, 0, C)
    tstate, whole_state = at_offset(dev, GUARD, state)
    tw, _ = at_offset(dev, GUARD, w, before=2)
    tb, _ = at_offset(dev, GUARD, b, before=1)
    tout, whole_out = at_offset(dev, GUARD, np.zeros((T, C), np.float32), before=11)
    run(dev, lambda g: ssm.ssm_conv(g, tx, tstate, tw, tb, out=tout, silu=True))
    want, want_state = ssm.ssm_conv_ref(x, state, w, b, True)
    check_scaled(dev.read(tout), want, 2e-6, "ssm_conv at offsets")
    assert np.array_equal(dev.read(tstate), want_state)
    assert guards_intact(dev, whole_state) and guards_intact(dev, whole_out, before=11)


def test_ssm_conv_chunks_equal_whole(dev, rng):
    T, C, K, S = 11, 77, 4, 3
    x, state, w, b = conv_inputs(rng, T, C, K, S)
    tw, tb = dev.upload(w), dev.upload(b)
    whole_state = dev.upload(state)
    whole = dev.read(run(dev, lambda g: ssm.ssm_conv(g, dev.upload(x), whole_state, tw, tb, silu=True)))
    chunk_state = dev.upload(state)
    tx = dev.upload(x)
    g_outs = run(dev, lambda g: [ssm.ssm_conv(g, tx.slice(0, a, e), chunk_state, tw, tb, silu=True)
                                 for a, e in ((0, 1), (1, 4), (4, T))])
    chunks = np.concatenate([dev.read(o) for o in g_outs])
    np.testing.assert_allclose(chunks, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dev.read(chunk_state), dev.read(whole_state), rtol=0, atol=1e-6)
    check_scaled(whole, ssm.ssm_conv_ref(x, state, w, b, True)[0], 2e-6, "ssm_conv whole")


def test_ssm_conv_large_grid(dev, rng):
    """More than 65535 work groups of 64 channels: the grid uses its second dimension."""
    T, C, K, S = 2, 65535 * 64 + 3, 2, 1
    x, state, w, b = conv_inputs(rng, T, C, K, S)
    tstate = dev.upload(state)
    out = run(dev, lambda g: ssm.ssm_conv(g, dev.upload(x), tstate, dev.upload(w), dev.upload(b)))
    want, want_state = ssm.ssm_conv_ref(x, state, w, b)
    check_scaled(dev.read(out), want, 1e-6, "ssm_conv large grid")
    assert np.array_equal(dev.read(tstate), want_state)


def test_ssm_conv_refuses_non_contiguous(dev, rng):
    x, state, w, b = conv_inputs(rng, 5, 9, 4, 3)
    xt = view_then_copy(dev, x)
    with pytest.raises(ValueError, match="ssm_conv: x .* not contiguous"):
        run(dev, lambda g: ssm.ssm_conv(g, xt, dev.upload(state), dev.upload(w), None))
    copy = copy_ops.copy
    tstate = dev.upload(state)
    out = run(dev, lambda g: ssm.ssm_conv(g, copy(g, xt), tstate, dev.upload(w), None))
    want, want_state = ssm.ssm_conv_ref(x, state, w, None)
    check_scaled(dev.read(out), want, 1e-6, "ssm_conv after copy")
    assert np.array_equal(dev.read(tstate), want_state)


def test_ssm_conv_checks_shapes(dev, rng):
    x, state, w, b = conv_inputs(rng, 1, 8, 4, 3)
    args = [dev.upload(a) for a in (x, state, w, b)]
    with pytest.raises(ValueError, match="ssm_conv: state"):
        run(dev, lambda g: ssm.ssm_conv(g, args[0], dev.upload(state[:7].copy()), *args[2:]))
    with pytest.raises(ValueError, match="ssm_conv: window .* shorter than the kernel"):
        run(dev, lambda g: ssm.ssm_conv(g, args[0], dev.upload(state[:, :2].copy()), *args[2:]))
    with pytest.raises(ValueError, match="ssm_conv: b"):
        run(dev, lambda g: ssm.ssm_conv(g, *args[:3], dev.upload(b[:5].copy())))
    with pytest.raises(ValueError, match="ssm_conv: out"):
        run(dev, lambda g: ssm.ssm_conv(g, *args, out=dev.empty((2, 8))))


# ---- ssm_scan ----------------------------------------------------------------------------------
@pytest.fixture(params=["device", 1, 4])
def scan_share(request, dev, monkeypatch):
    """The scan's loads of B, C and dt_proj's input shared by the device's subgroup (8 on
    llvmpipe), by none (the variants GPUs run) and by 4 invocations (another CPU subgroup size)."""
    if request.param != "device":
        monkeypatch.setattr(dev, "load_share", request.param)
    return dev.load_share


def kernels_of(dev, build) -> list:
    g = Graph(dev, "test")
    build(g)
    g.run()
    return [node[0] for node in g.nodes]


@pytest.mark.parametrize("N", [1, 7, 16, 64])
@pytest.mark.parametrize("gate", [False, True])
def test_ssm_scan(dev, rng, N, gate):
    T, Dn = 9, 133
    x, dt, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    z = z if gate else None
    tstate = dev.upload(state)
    y = run(dev, lambda g: ssm.ssm_scan(g, *(dev.upload(a) for a in (x, dt, A, B, C, D)), tstate,
                                        z=dev.upload(z) if gate else None))
    want, want_state = ssm.ssm_scan_ref(x, dt, A, B, C, D, state, z)
    check_scaled(dev.read(y), want, 2e-5, f"ssm_scan N{N} gate={gate}")
    check_scaled(dev.read(tstate), want_state, 2e-5, f"ssm_scan state N{N}")


@pytest.mark.parametrize("N,T", [(16, 1), (16, 9), (8, 4), (6, 3)])
def test_ssm_scan_dt_bias(dev, rng, N, T):
    """dt_bias: softplus(dt + bias) in the scan, for d_state that does (16, 8) and does not (6)
    take the vec4 loads, and dt before the activation (of either sign, large ones included)."""
    Dn = 77
    x, _, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    dt_raw = (3.0 * rng.standard_normal((T, Dn))).astype(np.float32)
    bias = rng.standard_normal(Dn).astype(np.float32)
    dt_raw[0, :3] = [30.0, -30.0, 19.5]
    tstate = dev.upload(state)
    y = run(dev, lambda g: ssm.ssm_scan(g, *(dev.upload(a) for a in (x, dt_raw, A, B, C, D)), tstate,
                                        z=dev.upload(z), dt_bias=dev.upload(bias)))
    want, want_state = ssm.ssm_scan_ref(x, dt_raw, A, B, C, D, state, z, dt_bias=bias)
    check_scaled(dev.read(y), want, 2e-5, f"ssm_scan dt_bias N{N}")
    check_scaled(dev.read(tstate), want_state, 2e-5, f"ssm_scan dt_bias state N{N}")


@pytest.mark.parametrize("dtype,rank,T", [("f32", 6, 3), ("f16", 48, 1), ("f16", 48, 5), ("bf16", 9, 2),
                                          ("q8_0", 64, 4), ("q4_k", 256, 2)])
def test_ssm_scan_dt_proj(dev, rng, dtype, rank, T, scan_share):
    """dt_proj: the dt projection W_dt @ dt_in inside the scan (of a column slice of x_proj's
    output, as Mamba passes it), for plain types with rank not a multiple of 4 (the tail) and
    block types, against the scan twin given the twin's projection; 77 channels, so the last
    group's spare invocations take part in the shared loads."""
    from test_quant_k import random_blocks

    from vkinfer.gpu.tensor import BLOCK_TYPES
    from vkinfer.gpu.weights import decode, f32_to_bf16, upload_weight
    N, Dn = 16, 77
    x, _, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    dbc = rng.standard_normal((T, rank + 7)).astype(np.float32)
    bias = rng.standard_normal(Dn).astype(np.float32)
    if dtype in BLOCK_TYPES:
        if dtype == "q8_0":
            raw = rng.integers(0, 256, (Dn, rank // 32, 34), dtype=np.uint8)
            raw[..., :2] = rng.uniform(1e-3, 1e-2, (Dn, rank // 32, 1)).astype(np.float16).view(np.uint8)
            raw = raw.reshape(Dn, -1)
        else:
            raw = random_blocks(rng, dtype, (Dn,), rank // 256)
        W = decode(raw, dtype).reshape(Dn, rank)
    else:
        W = (rng.standard_normal((Dn, rank)) / np.sqrt(rank)).astype(np.float32)
        raw = {"f32": W, "f16": W.astype(np.float16), "bf16": f32_to_bf16(W)}[dtype]
        W = decode(raw, dtype).reshape(Dn, rank)
    dbc /= np.float32(np.std(dbc[:, :rank] @ W.T) + 1e-3)      # dt of order 1 (random K blocks are large)
    tdbc, tstate, ty = dev.upload(dbc), dev.upload(state), dev.empty((T, Dn))
    g = Graph(dev, "test")
    ssm.ssm_scan(g, dev.upload(x), tdbc.slice(1, 0, rank), *(dev.upload(a) for a in (A, B, C, D)), tstate,
                 out=ty, z=dev.upload(z), dt_bias=dev.upload(bias), dt_proj=upload_weight(dev, raw, dtype))
    g.run()
    [(kernel, *_, spec)] = g.nodes
    assert kernel == f"ssm_scan.{'lane_' * (scan_share > 1)}dtproj_{dtype}"
    assert spec[3] == (rank % 4 == 0)      # DT_ALIGNED: W_dt's rows in aligned loads (f16 48), or not
    y = ty
    dt_raw = (dbc[:, :rank].astype(np.float64) @ W.astype(np.float64).T).astype(np.float32)
    want, want_state = ssm.ssm_scan_ref(x, dt_raw, A, B, C, D, state, z, dt_bias=bias)
    check_scaled(dev.read(y), want, 2e-5, f"ssm_scan dt_proj {dtype}")
    check_scaled(dev.read(tstate), want_state, 2e-5, f"ssm_scan dt_proj state {dtype}")


def test_ssm_scan_mamba_layout(dev, rng):
    """As Mamba calls it: x and z the halves of xz, B and C column slices of dbc =
    [dt_rank | B | C], state one layer of a [n_layer, d_inner, d_state] buffer."""
    T, Dn, N, R = 5, 96, 16, 6
    x, dt, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    xz, _ = at_offset(dev, GUARD, np.concatenate([x, z], axis=1), before=3)
    dbc, _ = at_offset(dev, GUARD, np.concatenate([rng.standard_normal((T, R)).astype(np.float32), B, C],
                                           axis=1), before=4)
    layers = np.stack([np.full((Dn, N), GUARD, np.float32), state, np.full((Dn, N), GUARD, np.float32)])
    tlayers = dev.upload(layers)
    tdt, _ = at_offset(dev, GUARD, dt, before=1)
    tA, _ = at_offset(dev, GUARD, A, before=2)
    tD, _ = at_offset(dev, GUARD, D, before=6)
    ty, whole_y = at_offset(dev, GUARD, np.zeros((T, Dn), np.float32), before=7)
    run(dev, lambda g: ssm.ssm_scan(g, xz.slice(1, 0, Dn), tdt, tA, dbc.slice(1, R, R + N),
                                    dbc.slice(1, R + N, R + 2 * N), tD, tlayers[1], out=ty,
                                    z=xz.slice(1, Dn, 2 * Dn)))
    want, want_state = ssm.ssm_scan_ref(x, dt, A, B, C, D, state, z)
    check_scaled(dev.read(ty), want, 2e-5, "ssm_scan mamba layout")
    got_layers = dev.read(tlayers)
    check_scaled(got_layers[1], want_state, 2e-5, "ssm_scan mamba layout state")
    assert np.all(got_layers[0] == GUARD) and np.all(got_layers[2] == GUARD)
    assert guards_intact(dev, whole_y, before=7)


@pytest.mark.parametrize("N", [16, 7])
def test_ssm_scan_chunks_equal_whole(dev, rng, N):
    T, Dn = 12, 70
    x, dt, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    tx, tdt, tA, tB, tC, tD, tz = (dev.upload(a) for a in (x, dt, A, B, C, D, z))
    whole_state = dev.upload(state)
    whole = dev.read(run(dev, lambda g: ssm.ssm_scan(g, tx, tdt, tA, tB, tC, tD, whole_state, z=tz)))
    chunk_state = dev.upload(state)
    rows = lambda t, a, e: t.slice(0, a, e)   # noqa: E731
    outs = run(dev, lambda g: [ssm.ssm_scan(g, rows(tx, a, e), rows(tdt, a, e), tA, rows(tB, a, e),
                                            rows(tC, a, e), tD, chunk_state, z=rows(tz, a, e))
                               for a, e in ((0, 1), (1, 4), (4, T))])
    chunks = np.concatenate([dev.read(o) for o in outs])
    np.testing.assert_allclose(chunks, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dev.read(chunk_state), dev.read(whole_state), rtol=0, atol=1e-6)


def test_ssm_scan_large_grid(dev, rng):
    """More than 65535 work groups of 64 channels."""
    T, Dn, N = 1, 65535 * 64 + 3, 1
    x, dt, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    tstate = dev.upload(state)
    y = run(dev, lambda g: ssm.ssm_scan(g, *(dev.upload(a) for a in (x, dt, A, B, C, D)), tstate,
                                        z=dev.upload(z)))
    want, want_state = ssm.ssm_scan_ref(x, dt, A, B, C, D, state, z)
    check_scaled(dev.read(y), want, 2e-5, "ssm_scan large grid")
    check_scaled(dev.read(tstate), want_state, 2e-5, "ssm_scan large grid state")


def test_ssm_scan_refuses_non_contiguous(dev, rng):
    T, Dn, N = 4, 10, 16
    x, dt, A, B, C, D, state, z = scan_inputs(rng, T, Dn, N)
    xt = view_then_copy(dev, x)
    rest = [dev.upload(a) for a in (dt, A, B, C, D)]
    with pytest.raises(ValueError, match="ssm_scan: x .* not contiguous"):
        run(dev, lambda g: ssm.ssm_scan(g, xt, *rest, dev.upload(state)))
    copy = copy_ops.copy
    tstate = dev.upload(state)
    y = run(dev, lambda g: ssm.ssm_scan(g, copy(g, xt), *rest, tstate))
    check_scaled(dev.read(y), ssm.ssm_scan_ref(x, dt, A, B, C, D, state)[0], 2e-5, "ssm_scan after copy")


def test_ssm_scan_checks_shapes(dev, rng):
    x, dt, A, B, C, D, state, z = scan_inputs(rng, 3, 10, 4)
    t = {k: dev.upload(v) for k, v in dict(x=x, dt=dt, A=A, B=B, C=C, D=D, state=state).items()}
    with pytest.raises(ValueError, match="ssm_scan: B"):
        run(dev, lambda g: ssm.ssm_scan(g, t["x"], t["dt"], t["A"], dev.upload(B[:, :3].copy()),
                                        t["C"], t["D"], t["state"]))
    with pytest.raises(ValueError, match="ssm_scan: state"):
        run(dev, lambda g: ssm.ssm_scan(g, *(t[k] for k in "x dt A B C D".split()),
                                        dev.upload(state.T.copy())))
    with pytest.raises(ValueError, match="ssm_scan: z"):
        run(dev, lambda g: ssm.ssm_scan(g, *t.values(), z=dev.upload(z[:2].copy())))
    with pytest.raises(ValueError, match="ssm_scan: d_state 300"):
        run(dev, lambda g: ssm.ssm_scan(g, t["x"], t["dt"], dev.empty((10, 300)), t["B"], t["C"],
                                        t["D"], t["state"]))


# ---- Mamba-2: the per-head scan -----------------------------------------------------------------
def heads_inputs(rng, T, H, P, N, G):
    x = rng.standard_normal((T, H * P)).astype(np.float32)
    dt = rng.standard_normal((T, H)).astype(np.float32) - 1.0
    A = -np.exp(rng.uniform(0.0, 2.0, H)).astype(np.float32)
    B = rng.standard_normal((T, G * N)).astype(np.float32)
    C = rng.standard_normal((T, G * N)).astype(np.float32)
    D = rng.standard_normal(H).astype(np.float32)
    bias = rng.standard_normal(H).astype(np.float32)
    state = rng.standard_normal((H * P, N)).astype(np.float32)
    return x, dt, A, B, C, D, bias, state


@pytest.mark.parametrize("T,H,P,N,G", [
    (1, 8, 16, 16, 1),        # decode, the fixture's shape
    (7, 8, 16, 16, 2),
    (5, 6, 17, 13, 3),        # odd head size and d_state (no vec4 loads), 3 groups
    (3, 4, 128, 256, 2),      # the largest head and state
    (33, 24, 64, 128, 8),     # Mamba-Codestral's 8 groups, a prompt chunk
])
def test_ssm_scan_heads(dev, rng, T, H, P, N, G, scan_share):
    """Heads of 64 and 128 channels (whole groups: B and C the same for a group) take the shared
    loads where the device has them."""
    x, dt, A, B, C, D, bias, state = heads_inputs(rng, T, H, P, N, G)
    tstate, y = dev.upload(state), dev.empty((T, H * P))
    kernels = kernels_of(dev, lambda g: ssm.ssm_scan_heads(
        g, *(dev.upload(a) for a in (x, dt, A, B, C, D)), tstate, dev.upload(bias), G, out=y))
    assert kernels == [f"ssm_scan.{'lane_' * (scan_share > 1 and P % 64 == 0)}heads"]
    want, want_state = ssm.ssm_scan_heads_ref(x, dt, A, B, C, D, state, bias, G)
    check_scaled(dev.read(y), want, 2e-5, "y")
    check_scaled(dev.read(tstate), want_state, 2e-5, "state")


def test_ssm_scan_heads_column_slices_and_slots(dev, rng):
    """B and C as column slices of one xBC row (as Mamba-2 has them) and the state in slot 2 of
    a 3-slot pool: the other slots stay as they were."""
    T, H, P, N, G = 4, 4, 8, 16, 2
    x, dt, A, B, C, D, bias, state = heads_inputs(rng, T, H, P, N, G)
    xbc = dev.upload(np.concatenate([x, B, C], axis=1))
    pool = rng.standard_normal((3, H * P, N)).astype(np.float32)
    pool[2] = state
    tpool = dev.upload(pool)
    slots = dev.upload(np.full(T, 2, np.uint32))
    Dn = H * P
    y = run(dev, lambda g: ssm.ssm_scan_heads(g, xbc.slice(1, 0, Dn), dev.upload(dt), dev.upload(A),
                                              xbc.slice(1, Dn, Dn + G * N), xbc.slice(1, Dn + G * N, Dn + 2 * G * N),
                                              dev.upload(D), tpool, dev.upload(bias), G, slots=slots))
    want, want_state = ssm.ssm_scan_heads_ref(x, dt, A, B, C, D, state, bias, G)
    got = dev.read(tpool)
    check_scaled(dev.read(y), want, 2e-5, "y")
    check_scaled(got[2], want_state, 2e-5, "state")
    np.testing.assert_array_equal(got[:2], pool[:2])


def test_ssm_scan_heads_refuses_bad_shapes(dev):
    from vkinfer.gpu import Graph
    g = Graph(dev, "errors")
    x, st = dev.empty((2, 32)), dev.empty((32, 16))
    with pytest.raises(ValueError, match="3 groups do not divide 4 heads"):
        ssm.ssm_scan_heads(g, x, dev.empty((2, 4)), dev.empty(4), dev.empty((2, 48)), dev.empty((2, 48)),
                           dev.empty(4), st, dev.empty(4), 3)
    with pytest.raises(ValueError, match="B has shape"):
        ssm.ssm_scan_heads(g, x, dev.empty((2, 4)), dev.empty(4), dev.empty((2, 16)), dev.empty((2, 32)),
                           dev.empty(4), st, dev.empty(4), 2)
    assert len(g) == 0
