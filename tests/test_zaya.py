"""ZAYA1 on the GPU (vkinfer.models.zaya.Zaya through the engine) against the transformers
reference of the ZAYA fixture and against the numpy executor ZayaNumpy.

Error bounds (absolute, on logits unless said otherwise):
* prompt logits at every position (stored columns), full last-position logits, the logits of
  every decode step of the greedy continuation: 1e-3 against transformers (REF_TOL); the
  greedy ids identical
* one chunk vs chunks of 7 vs token by token: 1e-4 (CHUNK_TOL)
* residual stream after every block vs ZayaNumpy: 1e-5 relative to max(1, |reference|) (LAYER_TOL)
* fixture variants (skip slot firing, F16/BF16 conv weights, q/k in different types) vs
  ZayaNumpy of the same file, in each skip mode: 1e-4 (NUMPY_TOL); the chosen slots identical
* F16 KV cache vs transformers, prompt and the first 8 decode steps: 1e-2 (F16_TOL; keys and
  values rounded to 11 significant bits)
"""
import logging
from pathlib import Path

import numpy as np
import pytest

from vkinfer.engine import Model
from vkinfer.models.zaya import ZayaNumpy
from vkinfer.ops import attention as at
from conftest import skip_bias_for_half

REF_TOL = 1e-3
CHUNK_TOL = 1e-4
LAYER_TOL = 1e-5
NUMPY_TOL = 1e-4
F16_TOL = 1e-2
F16_STEPS = 8           # decode steps checked with the F16 cache (the head dominates their time)
SKIP_BLOCK = 3          # a MoE block with an EDA input; its skip-slot bias is raised in the variant


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(Path(__file__).parent / "fixtures" / "zaya-small-q4_k_m.ref.npz"))


@pytest.fixture(scope="module")
def model(zaya_path, ref):
    """n_batch = the prompt length, so that the prompt is one chunk."""
    m = Model(zaya_path, n_batch=len(ref["prompt_ids"]), n_ctx=128, quiet=True, n_seq=4)
    yield m
    m.close()


@pytest.fixture(scope="module")
def prompt_logits(decoded):
    return decoded[0]


@pytest.fixture(scope="module")
def numpy_model(zaya_weights_only):
    return ZayaNumpy(zaya_weights_only)


def greedy(model, ref, n_steps):
    """(prompt logits [T, n_vocab], generated ids, logits of every decode step at the stored
    columns, the session) for n_steps greedy decode steps after the prompt."""
    s = model.session()
    prompt = s.eval(ref["prompt_ids"].tolist(), all_logits=True)
    logits, ids, steps = prompt[-1], [], []
    for _ in range(n_steps):
        ids.append(int(np.argmax(logits)))
        logits = s.eval([ids[-1]])
        steps.append(logits[ref["cols"]])
    return prompt, ids, np.array(steps), s


@pytest.fixture(scope="module")
def decoded(model, ref):
    return greedy(model, ref, len(ref["greedy_ids"]))


# ---- against transformers ------------------------------------------------------------------------
def test_prompt_logits_match_reference(prompt_logits, ref):
    assert prompt_logits.shape == (len(ref["prompt_ids"]), 262147)
    err_cols = np.abs(prompt_logits[:, ref["cols"]] - ref["prefill_logits_cols"]).max()
    err_last = np.abs(prompt_logits[-1] - ref["last_logits"]).max()
    print(f"prompt logits max err: columns {err_cols:.2e}, last row {err_last:.2e}")
    assert err_cols < REF_TOL and err_last < REF_TOL


def test_greedy_decode_matches_reference(decoded, ref):
    _, ids, steps, s = decoded
    err = np.abs(steps - ref["decode_logits_cols"]).max()
    print(f"decode logits max err {err:.2e}")
    assert ids == ref["greedy_ids"].tolist()
    assert err < REF_TOL
    assert s.n_past == len(ref["prompt_ids"]) + len(ids)
    decode = s.model._graphs[(1, 1, False)]
    print(f"decode graph: {len(decode)} dispatches, {decode.n_barriers} barriers per token")


def test_chunking_does_not_change_results(model, prompt_logits, ref):
    ids = ref["prompt_ids"].tolist()
    for size in (7, 1):
        with model.session() as s:
            parts = [s.eval(ids[i:i + size], all_logits=True) for i in range(0, len(ids), size)]
        err = np.abs(np.concatenate(parts) - prompt_logits).max()
        print(f"chunks of {size}: max err {err:.2e}")
        assert err < CHUNK_TOL, f"chunks of {size}"


def test_snapshot_restore(model, ref):
    ids = ref["prompt_ids"].tolist()
    s = model.session()
    s.eval(ids[:10])
    snap = s.snapshot()
    assert {"conv.0", "prev_x.0", "k.0", "v.0"} <= snap["state"].keys()
    assert snap["state"]["k.0"].shape[0] == 10          # the KV cache only up to n_past
    first = s.eval(ids[10:])
    s.eval(ids[:5])                          # move the state on, then go back
    s.restore(snap)
    assert s.n_past == 10
    np.testing.assert_array_equal(s.eval(ids[10:]), first)


def test_layers_match_numpy_executor(model, numpy_model, ref):
    """The debugging tool: the residual after every block's merge, GPU against ZayaNumpy."""
    ids = ref["prompt_ids"].tolist()
    gpu = model.session().layer_outputs(ids)
    collect = []
    numpy_model.skip_mode = "zero"
    numpy_model.forward(numpy_model.new_state(128), ids, collect)
    want = [a for name, _, a in collect if name == "res"]
    assert len(want) == gpu.shape[0] == model.impl.n_taps
    errs = [np.abs(gpu[l] - w).max() / max(1.0, np.abs(w).max()) for l, w in enumerate(want)]
    print("per-block max err", " ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < LAYER_TOL


def test_f16_kv_cache(zaya_path, ref):
    m = Model(zaya_path, n_batch=len(ref["prompt_ids"]), n_ctx=128, quiet=True, kv_type="f16")
    try:
        assert m.state.parts("k", 0)[0][1].dtype == "f16"
        prompt, ids, steps, _ = greedy(m, ref, F16_STEPS)
    finally:
        m.close()
    err_prompt = np.abs(prompt[:, ref["cols"]] - ref["prefill_logits_cols"]).max()
    err_decode = np.abs(steps - ref["decode_logits_cols"][:F16_STEPS]).max()
    print(f"f16 KV cache: prompt max err {err_prompt:.2e}, decode max err {err_decode:.2e}")
    assert ids == ref["greedy_ids"][:F16_STEPS].tolist()
    assert err_prompt < F16_TOL and err_decode < F16_TOL


def test_bad_options_are_refused(zaya_path):
    from vkinfer import VkInferError
    with pytest.raises(VkInferError, match="skip_mode 'sometimes' is not one of"):
        Model(zaya_path, n_ctx=16, quiet=True, skip_mode="sometimes")
    with pytest.raises(VkInferError, match="kv_type 'q8'"):
        Model(zaya_path, n_ctx=16, quiet=True, kv_type="q8")
    with pytest.raises(VkInferError, match="mamba models take no option 'kv_type'"):
        Model(Path(__file__).parent / "fixtures" / "mamba-tiny-q8_0.gguf", n_ctx=16, quiet=True, kv_type="f16")


@pytest.mark.parametrize("subgroups", [True, False])
def test_context_past_llvmpipe_loop_limit_is_refused(zaya_path, dev, monkeypatch, subgroups):
    """On a CPU device a context longer than the attention kernel gets right there (llvmpipe
    ends an invocation after 65535 loop iterations) is refused before anything is uploaded:
    attend_rows' bound, and without subgroups (VKINFER_NO_SUBGROUPS) the tile kernel's, of
    which the longest loads."""
    from vkinfer import VkInferError
    from vkinfer.gguf import open_gguf
    if not dev.lane_kernels:
        pytest.skip("only CPU devices have the limit")
    if not subgroups:
        monkeypatch.setenv("VKINFER_NO_SUBGROUPS", "1")
    p = open_gguf(zaya_path).params
    for kv_type in ("f32", "f16"):
        limit = (at.max_keys(dev, p.head_dim, p.value_dim, kv_type) if subgroups
                 else at.cpu_tile_max_keys(p.head_dim, p.value_dim, kv_type))
        with pytest.raises(VkInferError, match=rf"context {limit + 1} is more than {limit}, .* use -c {limit} or less"):
            Model(zaya_path, n_ctx=limit + 1, quiet=True, kv_type=kv_type)
    if not subgroups:
        with Model(zaya_path, n_ctx=limit, quiet=True, kv_type="f16") as m:
            assert m.n_ctx == limit


# ---- contiguity (issue 5 item 2) -----------------------------------------------------------------
def test_dense_ops_get_contiguous_inputs(model, monkeypatch):
    """Builds (without running) the T=1 and the T=24 graphs, with taps, while recording the
    arguments of every Graph.dispatch. Checks, for every recorded node: each binding is a Tensor
    (so the check sees its view, not a bare buffer), and unless the node is a copy.* kernel
    (ops.copy / ops.concat, the contiguity pass) every one of its Tensors is contiguous. The op
    wrappers refuse non-contiguous input already; this shows that building succeeds and that any
    column slice the graph makes reaches the dense ops only through copy nodes (the gate/up
    halves of the expert output are read in place by swiglu_rows)."""
    from vkinfer.gpu import Graph, Tensor
    nodes = []
    real_dispatch = Graph.dispatch

    def recording_dispatch(g, kernel, ins, outs, *args, **kwargs):
        nodes.append((kernel, list(ins), list(outs)))
        return real_dispatch(g, kernel, ins, outs, *args, **kwargs)

    monkeypatch.setattr(Graph, "dispatch", recording_dispatch)
    for B, T in ((1, 1), (1, model.n_batch), (4, 1), (2, 8)):
        nodes.clear()
        taps = model.dev.empty((model.impl.n_taps, B * T, model.impl.p.n_embd))
        g = model._record(B, T, all_logits=B == 1, taps=taps)
        assert len(g) == len(nodes) > 0
        for kernel, ins, outs in nodes:
            assert all(isinstance(t, Tensor) for t in ins + outs), kernel
            if kernel.startswith("copy."):
                continue
            bad = [t for t in ins + outs if not t.contiguous]
            assert not bad, f"{kernel} got non-contiguous {bad}"


# ---- fixture variant: skip slot, conv weight types, q/k of different types -----------------------
@pytest.fixture(scope="module")
def variant(zaya_weights_only, numpy_model, ref, tmp_path_factory):
    """The fixture with: blk.SKIP_BLOCK's skip-slot bias raised so that the slot wins for about
    half of the prompt tokens (as in test_zaya_numpy.py); blk.0's cca_conv_grp.weight in BF16
    and blk.2's in F16 (cast to F32 once at load); blk.2.attn_k.weight in F32 while attn_q stays
    quantized (the q/k projections then cannot share one weight and are concatenated).
    Returns (path, ZayaNumpy of it, boolean mask of the prompt tokens that skip)."""
    from gguf_edit import rewrite_gguf
    from vkinfer.gpu.weights import f32_to_bf16
    collect = []
    numpy_model.skip_mode = "zero"
    numpy_model.forward(numpy_model.new_state(64), ref["prompt_ids"], collect)
    probs = [a for name, l, a in collect if name == "probs" and l == SKIP_BLOCK][0]
    name = f"blk.{SKIP_BLOCK}.zaya_router_biases.weight"
    biases, skips = skip_bias_for_half(probs, numpy_model.weight(name))
    grp0 = numpy_model.weight("blk.0.cca_conv_grp.weight")
    grp2 = numpy_model.weight("blk.2.cca_conv_grp.weight")
    out = tmp_path_factory.mktemp("zaya") / "zaya-variant.gguf"
    rewrite_gguf(zaya_weights_only, out, tensors={
        name: (biases, "F32"),
        "blk.0.cca_conv_grp.weight": (f32_to_bf16(grp0).reshape(grp0.shape), "BF16"),
        "blk.2.cca_conv_grp.weight": (grp2.astype(np.float16), "F16"),
        "blk.2.attn_k.weight": (numpy_model.weight("blk.2.attn_k.weight"), "F32")})
    return out, ZayaNumpy(out), skips


@pytest.mark.parametrize("skip_mode", ["zero", "identity", "never"])
def test_variant_matches_numpy_executor(variant, ref, skip_mode, caplog):
    path, cpu, skips = variant
    ids = ref["prompt_ids"].tolist()
    m = Model(path, n_batch=len(ids), n_ctx=64, quiet=True, skip_mode=skip_mode)
    try:
        assert m.file.tensors["blk.0.cca_conv_grp.weight"].type == "BF16"
        assert 2 not in m.impl.wqk and 0 in m.impl.wqk
        s = m.session()
        gpu = s.eval(ids, all_logits=True)
        caplog.set_level(logging.DEBUG, logger="vkinfer")
        fired = m.impl.log_skips(len(ids), 0)
        # decode steps read the conv and delayed-value state the prompt left
        gpu_steps = [s.eval([t]) for t in ref["greedy_ids"][:3].tolist()]
    finally:
        m.close()
    cpu.skip_mode = skip_mode
    state, collect = cpu.new_state(64), []
    want = cpu.forward(state, ids, collect)
    want_steps = [cpu.forward(state, [t])[0] for t in ref["greedy_ids"][:3].tolist()]
    chosen = [a for name, l, a in collect if name == "expert" and l == SKIP_BLOCK][0]
    if skip_mode == "never":
        assert fired == {} and (chosen < cpu.p.n_expert).all()
    else:
        np.testing.assert_array_equal(chosen == cpu.p.n_expert, skips)
        assert fired == {SKIP_BLOCK: np.flatnonzero(skips).tolist()}
        assert any(f"block {SKIP_BLOCK}: skip slot" in r.getMessage() for r in caplog.records)
    err = max(np.abs(gpu - want).max(), np.abs(np.array(gpu_steps) - np.array(want_steps)).max())
    print(f"variant, skip_mode={skip_mode}: max err vs ZayaNumpy {err:.2e}")
    assert err < NUMPY_TOL


def test_unfused_router_matches_numpy_executor(zaya_path, numpy_model, ref):
    """Router matrices that cannot share one buffer (as with different types) take the unfused
    ops (issue 16 kept them for this): prompt and decode steps against ZayaNumpy."""
    ids = ref["prompt_ids"].tolist()
    m = Model(zaya_path, n_batch=len(ids), n_ctx=64, quiet=True)
    try:
        assert m.impl.router_w
        m.impl.router_w.clear()              # before any graph is recorded
        s = m.session()
        gpu = s.eval(ids, all_logits=True)
        gpu_steps = [s.eval([t]) for t in ref["greedy_ids"][:2].tolist()]
    finally:
        m.close()
    numpy_model.skip_mode = "zero"
    state = numpy_model.new_state(64)
    want = numpy_model.forward(state, ids)
    want_steps = [numpy_model.forward(state, [t])[0] for t in ref["greedy_ids"][:2].tolist()]
    err = max(np.abs(gpu - want).max(), np.abs(np.array(gpu_steps) - np.array(want_steps)).max())
    assert err < NUMPY_TOL
