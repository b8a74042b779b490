"""The ZAYA1 numpy reference executor (vkinfer.models.zaya.ZayaNumpy) against the transformers
reference of the ZAYA fixture, and its skip-slot modes on a fixture variant where the skip slot wins.

Error bounds (absolute, on logits):
* prompt logits at every position (stored columns) and full last-position logits: 1e-4
* decode-step logits (stored columns) of the 32-token greedy continuation: 1e-4; greedy ids identical
* chunked prefill (chunks of 1, 3, rest) vs one-shot: 1e-5 (logits and carried state)
* skip-slot modes: exact (bitwise) where the documented outputs allow it
"""
import logging

import numpy as np
import pytest

from vkinfer.models.zaya import ZayaNumpy
from conftest import skip_bias_for_half

REF_TOL = 1e-4
CHUNK_TOL = 1e-5
SKIP_BLOCK = 3          # a MoE block with an EDA input; the skip bias is rewritten there


@pytest.fixture(scope="module")
def ref():
    from pathlib import Path
    return dict(np.load(Path(__file__).parent / "fixtures" / "zaya-small-q4_k_m.ref.npz"))


@pytest.fixture(scope="module")
def model(zaya_path):
    return ZayaNumpy(zaya_path)


@pytest.fixture(scope="module")
def prefill(model, ref):
    """One-shot prompt: (state after it, logits [T, n_vocab], collect list)."""
    state, collect = model.new_state(), []
    logits = model.forward(state, ref["prompt_ids"], collect)
    return state, logits, collect


def collected(collect, name, block):
    found = [a for n, l, a in collect if n == name and l == block]
    assert len(found) == 1, (name, block)
    return found[0]


def run(model, ids, skip_mode, chunks=None):
    model.skip_mode = skip_mode
    state, collect = model.new_state(), []
    bounds = np.cumsum([0, *(chunks or [len(ids)])])
    logits = np.concatenate([model.forward(state, ids[a:b], collect) for a, b in zip(bounds, bounds[1:])])
    return logits, collect, state


# ---- against transformers ------------------------------------------------------------------------
def test_prompt_logits_match_reference(prefill, ref):
    _, logits, _ = prefill
    assert logits.shape == (len(ref["prompt_ids"]), 262147)
    err_cols = np.abs(logits[:, ref["cols"]] - ref["prefill_logits_cols"]).max()
    err_last = np.abs(logits[-1] - ref["last_logits"]).max()
    print(f"prompt logits max err: columns {err_cols:.2e}, last row {err_last:.2e}")
    assert err_cols < REF_TOL and err_last < REF_TOL


def test_greedy_decode_matches_reference(model, prefill, ref):
    state, logits, _ = prefill
    state = model.copy_state(state)
    token, generated, errs = int(np.argmax(logits[-1])), [], []
    for step in range(len(ref["greedy_ids"])):
        generated.append(token)
        step_logits = model.forward(state, [token])[0]
        errs.append(np.abs(step_logits[ref["cols"]] - ref["decode_logits_cols"][step]).max())
        token = int(np.argmax(step_logits))
    print(f"decode logits max err {max(errs):.2e}")
    assert generated == ref["greedy_ids"].tolist()
    assert max(errs) < REF_TOL
    assert state["n_past"] == len(ref["prompt_ids"]) + len(ref["greedy_ids"])


def test_chunked_prefill_equals_one_shot(model, prefill, ref):
    one_state, one_logits, _ = prefill
    ids = ref["prompt_ids"]
    logits, _, state = run(model, ids, "zero", chunks=[1, 3, len(ids) - 4])
    err = np.abs(logits - one_logits).max()
    print(f"chunked vs one-shot max err {err:.2e}")
    assert err < CHUNK_TOL
    assert state.keys() == one_state.keys() and state["n_past"] == one_state["n_past"]
    for key in state:
        if key != "n_past":
            np.testing.assert_allclose(state[key], one_state[key], rtol=0, atol=CHUNK_TOL, err_msg=key)


def test_collect_covers_every_block(model, prefill, ref):
    _, _, collect = prefill
    p, T = model.p, len(ref["prompt_ids"])
    for l in range(p.n_block):
        for name in ("res", "x", "h"):
            assert collected(collect, name, l).shape == (T, p.n_embd)
        if l % 2 == 0:
            assert collected(collect, "q", l).shape == (T, p.n_head, p.head_dim)
            assert collected(collect, "k", l).shape == (T, p.n_head_kv, p.head_dim)
            assert collected(collect, "v", l).shape == (T, p.n_head_kv, p.value_dim)
            assert collected(collect, "attn", l).shape == (T, p.n_head * p.value_dim)
        else:
            assert collected(collect, "probs", l).shape == (T, p.n_expert + 1)
            assert collected(collect, "router", l).shape == (T, p.n_router)
            # the fixture's README: the skip slot never wins here
            assert (collected(collect, "expert", l) < p.n_expert).all()
    assert collected(collect, "y", p.n_block).shape == (T, p.n_embd)
    # q and k leave the L2 norm with length sqrt(head_dim) (times k_scale); RoPE keeps lengths
    q = collected(collect, "q", 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.sqrt(p.head_dim), rtol=1e-5)


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError, match="skip_mode"):
        ZayaNumpy(model.file, skip_mode="sometimes")
    state = model.new_state(n_ctx=4)
    with pytest.raises(ValueError, match="token ids"):
        model.forward(state, [model.n_vocab])
    with pytest.raises(ValueError, match="n_ctx"):
        model.forward(state, [2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="no tokens"):
        model.forward(state, [])


# ---- skip slot -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skip_variant(zaya_path, tmp_path_factory, prefill, model, ref):
    """The fixture with blk.SKIP_BLOCK's skip-slot bias raised so that the slot wins for about
    half of the prompt tokens. Blocks before SKIP_BLOCK are unchanged, so the router's
    probabilities there are the original ones and say which tokens pick the skip slot.
    Returns (ZayaNumpy of the variant, boolean mask of the prompt tokens that skip)."""
    from gguf_edit import rewrite_gguf
    _, _, collect = prefill
    probs = collected(collect, "probs", SKIP_BLOCK)
    name = f"blk.{SKIP_BLOCK}.zaya_router_biases.weight"
    biases, skips = skip_bias_for_half(probs, model.weight(name))
    out = tmp_path_factory.mktemp("zaya") / "zaya-skip.gguf"
    drop = {k: None for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                              "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    rewrite_gguf(zaya_path, out, tensors={name: (biases, "F32")}, fields=drop)
    return ZayaNumpy(out), skips


def test_skip_slot_fires_where_the_biases_say(skip_variant, ref, caplog):
    variant, skips = skip_variant
    caplog.set_level(logging.DEBUG, logger="vkinfer")
    _, collect, _ = run(variant, ref["prompt_ids"], "zero")
    chosen = collected(collect, "expert", SKIP_BLOCK)
    assert 0 < skips.sum() < len(skips)
    np.testing.assert_array_equal(chosen == variant.p.n_expert, skips)
    fired = [r for r in caplog.records if "skip slot" in r.getMessage()]
    assert fired and f"block {SKIP_BLOCK}" in fired[0].getMessage()


def test_skip_zero_gives_no_moe_output(skip_variant, prefill, ref):
    variant, skips = skip_variant
    _, _, original = prefill
    _, collect, _ = run(variant, ref["prompt_ids"], "zero")
    h = collected(collect, "h", SKIP_BLOCK)
    assert (h[skips] == 0).all()
    np.testing.assert_array_equal(h[~skips], collected(original, "h", SKIP_BLOCK)[~skips])


def test_skip_identity_passes_the_input_scaled(skip_variant, ref):
    variant, skips = skip_variant
    _, zero, _ = run(variant, ref["prompt_ids"], "zero")
    _, identity, _ = run(variant, ref["prompt_ids"], "identity")
    h, x = collected(identity, "h", SKIP_BLOCK), collected(identity, "x", SKIP_BLOCK)
    p_skip = collected(identity, "probs", SKIP_BLOCK)[:, variant.p.n_expert]
    np.testing.assert_array_equal(h[skips], x[skips] * p_skip[skips, None])
    np.testing.assert_array_equal(h[~skips], collected(zero, "h", SKIP_BLOCK)[~skips])


def test_skip_never_equals_the_original_model(skip_variant, prefill, ref):
    variant, _ = skip_variant
    _, original_logits, _ = prefill
    never, _, _ = run(variant, ref["prompt_ids"], "never")
    zero, _, _ = run(variant, ref["prompt_ids"], "zero")
    np.testing.assert_array_equal(never, original_logits)
    assert np.abs(zero - original_logits).max() > 1e-3      # the skip slot changes the result


def test_skip_zero_is_chunking_independent(skip_variant, ref):
    variant, _ = skip_variant
    ids = ref["prompt_ids"]
    one_shot, _, _ = run(variant, ids, "zero")
    chunked, _, _ = run(variant, ids, "zero", chunks=[1, 3, len(ids) - 4])
    assert np.abs(chunked - one_shot).max() < CHUNK_TOL
