"""The slot engine: several sequences decoded together against each alone and against the
fixtures' transformers references; slot reuse; the prefix-state cache; no growth over many
open/eval/close cycles; a 1 MiB binding limit.

Bounds: batched vs alone 3e-5 on the logits (each row's sums are its own, but rounded in another
order: one token and several run different matmul kernels); against transformers as tests/test_mamba.py and tests/test_zaya.py (1e-3), greedy ids
identical."""
from pathlib import Path

import numpy as np
import pytest

from vkinfer import VkInferError, load

FIX = Path(__file__).parent / "fixtures"
DEMO = Path(__file__).parent.parent / "vkinfer" / "data" / "demo-mamba.gguf"
MAMBA = [("mamba-tiny-f16.gguf", "mamba-tiny.ref.npz"),
         ("mamba-tiny-q8_0.gguf", "mamba-tiny-q8_0.ref.npz"),
         ("mamba-tiny-q4_k_m.gguf", "mamba-tiny-q4_k_m.ref.npz")]
BATCH_TOL = 3e-5
REF_TOL = 1e-3
LENGTHS = (None, 1, 70, 9, 33, 2, 17, 5)     # None: the reference prompt


def prompts(ref, n_vocab_ids: int, seed: int = 7) -> list:
    rng = np.random.default_rng(seed)
    ref_ids = ref["prompt_ids"].tolist()
    return [ref_ids if n is None else rng.integers(0, n_vocab_ids, n).tolist() for n in LENGTHS]


def greedy_alone(model, prompt: list, steps: int) -> tuple:
    """(logits after the prompt and after each greedy step [steps + 1, n_vocab], ids)."""
    with model.session() as s:
        rows, ids = [s.eval(prompt)], []
        for _ in range(steps):
            ids.append(int(np.argmax(rows[-1])))
            rows.append(s.eval([ids[-1]]))
    return np.array(rows), ids


def greedy_together(model, prompts: list, steps: int) -> tuple:
    sessions = [model.session() for _ in prompts]
    try:
        rows = [model.eval_batch(list(zip(sessions, prompts)))]
        ids = []
        for _ in range(steps):
            ids.append(np.argmax(rows[-1], axis=1).tolist())
            rows.append(model.eval_batch([(s, [t]) for s, t in zip(sessions, ids[-1])]))
    finally:
        for s in sessions:
            s.close()
    return np.stack(rows, axis=1), [list(col) for col in zip(*ids)]      # [B, steps + 1, vocab]


def check_batches(model, ref, steps: int, sizes=(2, 3, 8)):
    ps = prompts(ref, min(model.n_vocab, 4096))
    alone = [greedy_alone(model, p, steps) for p in ps[:max(sizes)]]
    for B in sizes:
        rows, ids = greedy_together(model, ps[:B], steps)
        for b in range(B):
            err = np.abs(rows[b] - alone[b][0]).max()
            assert err <= BATCH_TOL, f"B={B}, sequence {b} (prompt of {len(ps[b])}): {err:.2e}"
            assert ids[b] == alone[b][1]
    # sequence 0 is the reference prompt: its continuation is the fixture's
    n = len(ref["greedy_ids"])
    assert alone[0][1][:n] == ref["greedy_ids"].tolist()[:steps]
    assert np.abs(alone[0][0][0] - ref["last_logits"]).max() < REF_TOL


@pytest.fixture(scope="module", params=MAMBA, ids=[c[0] for c in MAMBA])
def mamba(request):
    model_file, ref_file = request.param
    with load(FIX / model_file, n_batch=32, n_ctx=160, n_seq=8) as m:
        yield m, np.load(FIX / ref_file)


def test_mamba_batched_equals_alone(mamba):
    model, ref = mamba
    check_batches(model, ref, steps=len(ref["greedy_ids"]))


@pytest.fixture(scope="module")
def zaya(zaya_path):
    ref = dict(np.load(FIX / "zaya-small-q4_k_m.ref.npz"))
    with load(zaya_path, n_batch=32, n_ctx=96, n_seq=8) as m:
        yield m, ref


def test_zaya_batched_equals_alone(zaya):
    model, ref = zaya
    check_batches(model, ref, steps=4)


def test_zaya_batched_greedy_matches_reference(zaya):
    """The reference prompt in a batch of 3 decodes the fixture's whole greedy continuation."""
    model, ref = zaya
    ps = [prompts(ref, 4096)[i] for i in (0, 1, 3)]
    rows, ids = greedy_together(model, ps, len(ref["greedy_ids"]) - 1)
    assert ids[0] == ref["greedy_ids"].tolist()[:-1]
    steps = rows[0, 1:, :][:, ref["cols"]]
    assert np.abs(steps - ref["decode_logits_cols"][:-1]).max() < REF_TOL


def test_slot_reuse_starts_from_zero(mamba):
    model, ref = mamba
    prompt = ref["prompt_ids"].tolist()
    fresh = model.logits(prompt)[-1].copy()
    with model.session() as s:
        slot = s.slot
        s.eval(prompt)
    with model.session() as again:
        assert again.slot == slot and again.n_past == 0
        assert all(not a.any() for a in again.snapshot()["state"].values())
        np.testing.assert_array_equal(again.eval(prompt), fresh)


def test_slots_run_out_and_come_back(mamba):
    model, _ = mamba
    held = [model.session() for _ in range(model.free_slots)]
    with pytest.raises(VkInferError, match="sequence slots are in use"):
        model.session()
    held.pop().close()
    with model.session():
        pass
    for s in held:
        s.close()
    with pytest.raises(VkInferError, match="session is closed"):
        s.eval([1])


def test_mamba_prefix_cache_hit_equals_full_prefill(mamba):
    check_prefix_cache_hit(*mamba)


def test_zaya_prefix_cache_hit_equals_full_prefill(zaya):
    check_prefix_cache_hit(*zaya)


def check_prefix_cache_hit(model, ref):
    prompt = ref["prompt_ids"].tolist()
    extra = [11, 12, 13, 14, 15]
    with model.session() as s:
        want = s.eval(prompt + extra)                  # a full prefill
    model.cache.entries.clear()
    model.cache.nbytes = 0
    with model.session() as s:
        assert s.start(prompt) == prompt               # nothing cached
        s.eval(prompt)
        s.checkpoint()
    assert len(model.cache.entries) == 1
    with model.session() as s:
        hits, before = model.cache.hits, model.tokens_evaluated
        rest = s.start(prompt + extra)
        assert rest == extra and model.cache.hits == hits + 1 and s.n_past == len(prompt)
        got = s.eval(rest)
        assert model.tokens_evaluated - before == len(extra)      # only the new tokens were fed
    assert np.abs(got - want).max() <= BATCH_TOL


def test_generation_uses_and_fills_the_cache(mamba):
    """generate() leaves snapshots at the end of the prompt and of the generation; a prompt
    extending the whole first exchange feeds only its new tokens, and gives what a model
    without a cache gives."""
    model, ref = mamba
    model.cache.entries.clear()
    model.cache.nbytes = 0
    prompt = ref["prompt_ids"].tolist()[:20]
    first = [t for t, _, _ in model.stream(prompt, max_tokens=6, ignore_eos=True)]
    assert len(model.cache.entries) == 2
    follow = prompt + first + [7, 8, 9]
    before = model.tokens_evaluated
    second = [t for t, _, _ in model.stream(follow, max_tokens=4, ignore_eos=True)]
    # the cached state stands for the prompt and the 5 generated tokens that were fed: the 6th
    # and the 3 new ones are the prompt's rest, then 3 of the 4 new tokens are fed
    assert model.tokens_evaluated - before == 4 + 3
    with load(model.file.path, n_ctx=160, cache_mb=0) as plain:
        assert [t for t, _, _ in plain.stream(follow, max_tokens=4, ignore_eos=True)] == second


def test_open_eval_close_cycles_do_not_grow():
    with load(DEMO, n_seq=2, n_ctx=64) as m:
        def cycle(i):
            with m.session() as s:
                s.eval([1 + i % 5, 2, 3][:1 + i % 3])
            m.generate_batch(["a b", "c"], max_tokens=2)
        cycle(0), cycle(1), cycle(2)
        counts = (m.dev.allocated_bytes, len(m.dev._algos), len(m._graphs))
        for i in range(200):
            cycle(i)
        assert (m.dev.allocated_bytes, len(m.dev._algos), len(m._graphs)) == counts


def test_one_mib_bindings_batched(zaya_path, monkeypatch):
    """VKINFER_MAX_BINDING_BYTES=1048576: weights, logits (a ZAYA row of 262k logits alone is
    over 1 MiB) and state split across bindings; B = 4 batched against the references."""
    monkeypatch.setenv("VKINFER_MAX_BINDING_BYTES", "1048576")
    for path, ref_file, kw in ((FIX / "mamba-tiny-q8_0.gguf", "mamba-tiny-q8_0.ref.npz", {}),
                               (zaya_path, "zaya-small-q4_k_m.ref.npz", {})):
        ref = np.load(FIX / ref_file)
        with load(path, n_batch=32, n_ctx=96, n_seq=4, **kw) as m:
            assert len(m.logits_blocks) > 1
            ps = prompts(ref, 4096)[:4]
            rows, ids = greedy_together(m, ps, 3)
            assert ids[0] == ref["greedy_ids"].tolist()[:3]
            assert np.abs(rows[0, 0] - ref["last_logits"]).max() < REF_TOL
            if "decode_logits_cols" in ref.files:
                assert np.abs(rows[0, 1:][:, ref["cols"]] - ref["decode_logits_cols"][:3]).max() < REF_TOL


def test_eval_batch_refuses_bad_input(mamba):
    model, _ = mamba
    with model.session() as a, model.session() as b:
        with pytest.raises(VkInferError, match="listed twice"):
            model.eval_batch([(a, [1]), (a, [2])])
        with pytest.raises(VkInferError, match="non-empty"):
            model.eval_batch([(a, [1]), (b, [])])
        with pytest.raises(VkInferError, match="whole numbers"):
            model.eval_batch([(a, [1.5])])
        with pytest.raises(VkInferError, match="outside the vocabulary"):
            model.eval_batch([(a, [model.n_vocab])])
        with pytest.raises(VkInferError, match="context size"):
            model.eval_batch([(a, [1]), (b, [1] * (model.n_ctx + 1))])
        assert a.n_past == b.n_past == 0            # nothing was fed


def test_stop_strings_and_logprobs(mamba):
    model, ref = mamba
    prompt = ref["prompt_ids"].tolist()[:12]
    plain = "".join(model.generate(prompt, max_tokens=12))
    assert len(plain) > 4
    stop = plain[2:4]
    events = list(model.stream(prompt, max_tokens=12, stop=[stop], logprobs=3))
    text = "".join(t for _, t, _ in events)
    assert stop not in text and plain.startswith(text) and text == plain[:plain.find(stop)]
    assert events[-1][2] == "stop"
    gen = []
    from vkinfer.engine import Generation
    with model.session() as s:
        g = Generation(model, s, prompt, max_tokens=2, logprobs=3)
        for _, token, _, finish in model.run_generations([g]):
            gen.append((token, g.last_logprobs))
    want = model.logits(prompt)[-1].astype(np.float64)
    want = want - (want.max() + np.log(np.exp(want - want.max()).sum()))
    token, (lp, top) = gen[0]
    assert token == int(np.argmax(want)) and abs(lp - want[token]) < 1e-5
    assert [i for i, _ in top] == np.argsort(-want, kind="stable")[:3].tolist()


def test_generate_batch_equals_one_at_a_time(mamba):
    model, ref = mamba
    ps = [ref["prompt_ids"].tolist()[:n] for n in (3, 20, 7)]
    together = model.generate_batch(ps, max_tokens=6)
    alone = ["".join(model.generate(p, max_tokens=6)) for p in ps]
    assert together == alone


def test_repeated_prompt_needs_no_prompt_step(mamba):
    """The end-of-prompt snapshot keeps its logits: the same prompt again feeds no prompt token
    and continues exactly as the first time."""
    model, ref = mamba
    model.cache.entries.clear()
    model.cache.nbytes = 0
    prompt = ref["prompt_ids"].tolist()[:15]
    first = [t for t, _, _ in model.stream(prompt, max_tokens=4, ignore_eos=True)]
    before = model.tokens_evaluated
    again = [t for t, _, _ in model.stream(prompt, max_tokens=4, ignore_eos=True)]
    assert again == first and model.tokens_evaluated - before == 3      # the 3 decode steps only
