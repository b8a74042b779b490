"""Mamba-2 end to end against transformers' Mamba2ForCausalLM outputs in the fixtures (n_groups 1
and 2; prefill through its chunked scan, decode through its recurrent update), in one chunk and
in chunks of 1, 3 and 32 tokens; layer by layer against the numpy executor; batched with other
sequences against each alone.

Bounds: 1e-4 on the logits against transformers (measured ~6e-6), greedy ids identical; 1e-5
relative per layer against the numpy executor; batched vs alone 1e-5."""
from pathlib import Path

import numpy as np
import pytest

from conftest import check_greedy_decode, check_prompt_logits
from vkinfer import load
from vkinfer.models.mamba2 import Mamba2Numpy

FIX = Path(__file__).parent / "fixtures"
CASES = ["mamba2-tiny-q8_0", "mamba2-tiny-g2-q8_0"]
REF_TOL = 1e-4


@pytest.fixture(scope="module", params=CASES)
def case(request):
    with load(FIX / f"{request.param}.gguf", n_ctx=128, n_batch=32, n_seq=4) as m:
        yield m, np.load(FIX / f"{request.param}.ref.npz")


@pytest.mark.parametrize("chunk", [None, 1, 3, 32])
def test_prefill_and_decode_match_transformers(case, chunk):
    model, ref = case
    ids = ref["prompt_ids"].tolist()
    with model.session() as s:
        size = chunk or len(ids)
        prompt = np.concatenate([s.eval(ids[i:i + size], all_logits=True) for i in range(0, len(ids), size)])
        check_prompt_logits(prompt, ref, REF_TOL)
        check_greedy_decode(s, prompt[-1], ref, REF_TOL)


def test_layers_match_numpy_executor(case):
    model, ref = case
    ids = ref["prompt_ids"].tolist()[:24]
    with model.session() as s:
        gpu = s.layer_outputs(ids)
    cpu = Mamba2Numpy(model.file)
    collect = []
    cpu.forward(cpu.new_state(), ids, collect)
    assert len(collect) == gpu.shape[0] == model.impl.n_taps
    for layer, want in enumerate(collect):
        err = np.abs(gpu[layer] - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-5, f"layer {layer}: {err:.3g}"


def test_batched_equals_alone(case):
    model, ref = case
    rng = np.random.default_rng(5)
    prompts = [ref["prompt_ids"].tolist(), rng.integers(0, 4096, 9).tolist(), [17]]
    alone = []
    for p in prompts:
        with model.session() as s:
            alone.append([s.eval(p), s.eval([3]), s.eval([4])])
    sessions = [model.session() for _ in prompts]
    try:
        together = [model.eval_batch(list(zip(sessions, prompts)))]
        for t in (3, 4):
            together.append(model.eval_batch([(s, [t]) for s in sessions]))
    finally:
        for s in sessions:
            s.close()
    for step, rows in enumerate(together):
        for b, row in enumerate(rows):
            assert np.abs(row - alone[b][step]).max() <= 1e-5


def test_wrong_group_count_is_refused(tmp_path):
    """n_groups must divide the heads: one clear error naming the key."""
    from gguf_edit import rewrite_gguf
    from vkinfer import VkInferError
    bad = tmp_path / "bad.gguf"
    rewrite_gguf(FIX / "mamba2-tiny-q8_0.gguf", bad, fields={"mamba2.ssm.group_count": 3})
    with pytest.raises(VkInferError, match="group_count 3 does not divide the 8 heads"):
        load(bad)
