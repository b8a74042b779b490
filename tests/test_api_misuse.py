"""Every misuse of the Python API is one VkInferError with a message, and leaves the session as
it was (compared with a snapshot taken before); a saved session round-trips at exactly the path
given; the CLI's early-closed pipe ends quietly."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vkinfer import VkInferError, load

FIX = Path(__file__).parent / "fixtures"
MODEL = FIX / "mamba-tiny-q8_0.gguf"


@pytest.fixture(scope="module")
def model():
    with load(MODEL, n_ctx=64, n_seq=2) as m:
        yield m


@pytest.mark.parametrize("ids,message", [
    ([], "non-empty"),
    ([[1, 2], [3, 4]], "flat list"),
    ([1.7], "whole numbers"),
    ([float("nan")], "whole numbers"),
    ([-1], "outside the vocabulary"),
    ("hello", "flat list"),
])
def test_eval_refuses_bad_ids_and_changes_nothing(model, ids, message):
    with model.session() as s:
        s.eval([1, 2, 3])
        before = s.snapshot()
        with pytest.raises(VkInferError, match=message):
            s.eval(ids)
        after = s.snapshot()
    assert after["n_past"] == before["n_past"] == 3 and after["tokens"] == before["tokens"]
    for key, value in before["state"].items():
        np.testing.assert_array_equal(after["state"][key], value)


@pytest.mark.parametrize("snap,message", [
    ({}, "not a session snapshot"),
    ({"n_past": -1, "state": {}}, "outside 0..64"),
    ({"n_past": 1.5, "state": {}}, "outside 0..64"),
    ({"n_past": 0, "state": {}}, "does not fit"),
    ("nope", "not a session snapshot"),
])
def test_restore_refuses_what_does_not_fit(model, snap, message):
    with model.session() as s:
        s.eval([4, 5])
        before = s.snapshot()
        with pytest.raises(VkInferError, match=message):
            s.restore(snap)
        assert s.n_past == 2
        np.testing.assert_array_equal(s.snapshot()["state"]["scan.0"], before["state"]["scan.0"])


def test_restore_refuses_a_state_of_the_wrong_shape_or_nan(model):
    with model.session() as s:
        s.eval([4, 5])
        snap = s.snapshot()
        bad = {**snap, "state": {**snap["state"], "conv.0": snap["state"]["conv.0"][:, :1]}}
        with pytest.raises(VkInferError, match="conv.0"):
            s.restore(bad)
        nan = {**snap, "state": {**snap["state"], "scan.1": np.full_like(snap["state"]["scan.1"], np.nan)}}
        with pytest.raises(VkInferError, match="scan.1"):
            s.restore(nan)


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_p": 2.0}, "top_p=2.0"),
    ({"max_tokens": 0}, "max_tokens must be"),
    ({"stop": [3]}, "stop must be"),
    ({"logprobs": 50}, "logprobs must be"),
])
def test_generate_refuses_bad_settings(model, kwargs, message):
    with pytest.raises(VkInferError, match=message):
        list(model.generate([1, 2, 3], **{"max_tokens": 4, **kwargs}))
    assert model.free_slots == 2                   # the slot came back


@pytest.mark.parametrize("kwargs,message", [
    ({"n_ctx": "4096"}, "n_ctx must be a whole number"),
    ({"n_ctx": 0}, "n_ctx must be a whole number"),
    ({"n_seq": 1.5}, "n_seq must be a whole number"),
    ({"cache_mb": -1}, "cache_mb must be"),
])
def test_load_refuses_bad_options(kwargs, message):
    with pytest.raises(VkInferError, match=message):
        load(MODEL, **kwargs)


def test_closed_model_and_session(tmp_path):
    m = load(MODEL, n_ctx=16)
    s = m.session()
    s.close()
    s.close()                                      # twice is harmless
    with pytest.raises(VkInferError, match="session is closed"):
        s.eval([1])
    m.close()
    with pytest.raises(VkInferError, match="model is closed"):
        m.session()
    with pytest.raises(VkInferError, match="model is closed"):
        m.logits([1])


def test_save_writes_the_path_given_and_load_reads_it(model, tmp_path):
    path = tmp_path / "chat-state"                 # no .npz suffix: written exactly here
    with model.session() as s:
        s.eval([7, 8, 9])
        want = s.eval([10])
        s.save(path)
    assert path.exists() and not path.with_suffix(".npz").exists()
    with model.session() as s:
        s.load(path)
        assert s.n_past == 4 and s.tokens == [7, 8, 9, 10]
    truncated = tmp_path / "truncated"
    truncated.write_bytes(path.read_bytes()[:200])
    with model.session() as s:
        with pytest.raises(VkInferError, match="not a saved vkinfer session"):
            s.load(truncated)
        assert s.n_past == 0
    del want


@pytest.mark.parametrize("command", [["devices"], ["info", str(MODEL)]])
def test_a_closed_pipe_is_not_a_traceback(command):
    proc = subprocess.run(f"{sys.executable} -m vkinfer {' '.join(command)} | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
