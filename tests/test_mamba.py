"""Mamba-1 end to end against Hugging Face transformers' outputs in the fixtures (computed with
each file's own dequantized weights), chunking independence, and a per-layer comparison with the
numpy executor built from the ops' twins."""
from pathlib import Path

import numpy as np
import pytest

from conftest import check_greedy_decode, check_prompt_logits
from vkinfer import load
from vkinfer.models.mamba import MambaNumpy

FIX = Path(__file__).parent / "fixtures"
CASES = [("mamba-tiny-f16.gguf", "mamba-tiny.ref.npz"),
         ("mamba-tiny-q8_0.gguf", "mamba-tiny-q8_0.ref.npz"),
         ("mamba-tiny-q4_k_m.gguf", "mamba-tiny-q4_k_m.ref.npz")]
BOUND = 1e-3        # the bound against transformers; measured: about 4e-6


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    model_file, ref_file = request.param
    model = load(FIX / model_file, n_batch=32)
    yield model, np.load(FIX / ref_file)
    model.close()


def test_prefill_logits_match_transformers(case):
    model, ref = case
    logits = model.logits(ref["prompt_ids"])
    assert logits.shape == (len(ref["prompt_ids"]), model.n_vocab)
    assert np.abs(logits[:, ref["cols"]] - ref["prefill_logits_cols"]).max() < BOUND
    assert np.abs(logits[-1] - ref["last_logits"]).max() < BOUND


def test_greedy_continuation_matches_transformers(case):
    model, ref = case
    s = model.session()
    logits = s.eval(ref["prompt_ids"])
    out = []
    for _ in range(len(ref["greedy_ids"])):
        out.append(int(np.argmax(logits)))
        logits = s.eval([out[-1]])
    assert out == ref["greedy_ids"].tolist()
    assert s.n_past == len(ref["prompt_ids"]) + len(out)


def test_chunking_does_not_change_results(case):
    model, ref = case
    ids = ref["prompt_ids"].tolist()
    whole = model.logits(ids)
    for size in (7, 1):
        with model.session() as s:
            parts = [s.eval(ids[i:i + size], all_logits=True) for i in range(0, len(ids), size)]
        assert np.abs(np.concatenate(parts) - whole).max() < 1e-4, f"chunks of {size}"


def test_snapshot_restore(case):
    model, ref = case
    ids = ref["prompt_ids"].tolist()
    s = model.session()
    s.eval(ids[:10])
    snap = s.snapshot()
    first = s.eval(ids[10:])
    s.restore(snap)
    assert s.n_past == 10
    np.testing.assert_array_equal(s.eval(ids[10:]), first)


def test_layers_match_numpy_executor(case):
    """The debugging tool: the residual after every layer, GPU against the numpy executor."""
    model, ref = case
    ids = ref["prompt_ids"].tolist()[:20]
    gpu = model.session().layer_outputs(ids)
    cpu = MambaNumpy(model.file)
    collect = []
    cpu_logits = cpu.forward(cpu.new_state(), ids, collect)
    assert len(collect) == gpu.shape[0]
    for layer, want in enumerate(collect):
        err = np.abs(gpu[layer] - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-5, f"layer {layer}: {err:.3g}"
    assert np.abs(cpu_logits[:, ref["cols"]] - ref["prefill_logits_cols"][:20]).max() < BOUND


def test_context_limit():
    from vkinfer.errors import VkInferError
    model = load(FIX / "mamba-tiny-q8_0.gguf", n_ctx=16)
    s = model.session()
    with pytest.raises(VkInferError, match="exceed the context size of 16"):
        s.eval(list(range(20)))
    s.eval(list(range(16)))
    with pytest.raises(VkInferError, match="16 already in the context"):
        s.eval([1])
    model.close()


def test_falcon_mamba_matches_transformers():
    """Falcon-Mamba (dt_b_c_rms): its dt, B and C norms use transformers' mixer_rms_eps of 1e-6,
    not the layer-norm eps (1e-5 there is a 1.6e-3 logit error on this fixture)."""
    ref = np.load(FIX / "falcon-mamba-tiny-q8_0.ref.npz")
    with load(FIX / "falcon-mamba-tiny-q8_0.gguf", n_ctx=128) as model:
        assert model.impl.p.dt_b_c_rms and model.impl.p.dt_b_c_eps == 1e-6
        check_prompt_logits(model.logits(ref["prompt_ids"]), ref, 1e-4)
        with model.session() as s:
            check_greedy_decode(s, s.eval(ref["prompt_ids"]), ref, 1e-4)
