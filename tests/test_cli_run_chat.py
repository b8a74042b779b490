"""`vkinfer run` and `vkinfer chat` on the Mamba fixture: greedy output equals transformers'
continuation, bad input gives one line and exit 1, chat keeps the state between turns."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vkinfer import load
from vkinfer.chat_cli import ChatRunner
from vkinfer.tokenizer import Tokenizer

FIX = Path(__file__).parent / "fixtures"
MODEL = FIX / "mamba-tiny-f16.gguf"


def vkinfer(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "vkinfer", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_run_greedy_matches_transformers():
    ref = np.load(FIX / "mamba-tiny.ref.npz")
    text = str(ref["text"])
    res = vkinfer("run", MODEL, "-p", text, "-n", 32, "--temp", 0, "-q")
    assert res.returncode == 0, res.stderr
    want = text + Tokenizer.from_gguf(MODEL).decode(ref["greedy_ids"].tolist())
    assert res.stdout.rstrip("\n") == want
    assert "prompt: 31 tokens" in res.stderr and "generation: 32 tokens" in res.stderr


@pytest.mark.parametrize("args,message", [
    (("run", "/no/such/model.gguf", "-p", "hi"), "no such file"),
    (("run", MODEL, "-c", "8", "-p", "one two three four five six seven eight nine ten"),
     "exceed the context size of 8"),
    (("run", MODEL, "--top-p", "2", "-p", "hi"), "top_p=2"),
    (("chat", FIX / "mamba-tiny.ref.npz"), "not a GGUF file"),
])
def test_bad_input_one_line(args, message):
    res = vkinfer(*args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_chat_session_commands(tmp_path):
    saved = tmp_path / "chat.npz"
    script = f"Hello\n/save {saved}\n/reset\n/load {saved}\nMore\n/help\n"
    res = vkinfer("chat", MODEL, "-n", "5", "-q", stdin=script)
    assert res.returncode == 0, res.stderr
    assert f"(saved to {saved})" in res.stderr and "(loaded" in res.stderr
    assert "/reset" in res.stderr          # the help text
    assert "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def model():
    m = load(MODEL, n_ctx=512)
    yield m
    m.close()


class ScriptedSampler:
    """Answers with fixed text, then the end-of-text token: a reply a trained model could give."""
    def __init__(self, ids):
        self.ids = list(ids)

    def sample(self, logits, history, generated=()):
        return self.ids.pop(0) if self.ids else 0


def test_turn_two_feeds_only_its_own_tokens(model):
    tok = model.tokenizer
    runner = ChatRunner(model, {"temperature": 0.0}, max_tokens=20)
    runner.sampler = ScriptedSampler(tok.encode(" I am fine."))
    runner.turn("Hello there", lambda text, r: None)
    n_after_turn_one = runner.session.n_past
    evals_before = len(runner.session.timings)
    runner.sampler = ScriptedSampler(tok.encode(" Sure."))
    runner.turn("Tell me more", lambda text, r: None)
    added = tok.encode("\nUser: Tell me more\nAssistant:")
    # Turn two's prompt is exactly the text the template added after turn one's reply...
    assert runner.session.timings[evals_before][0] == len(added)
    # ...so the session never re-processed turn one: each token was evaluated once.
    assert sum(n for n, _ in runner.session.timings) == runner.session.n_past
    assert runner.session.n_past == n_after_turn_one + len(added) + len(tok.encode(" Sure."))
    assert runner.conv.n_fed == runner.session.n_past


def test_ctrl_c_keeps_the_conversation_consistent(model, monkeypatch):
    runner = ChatRunner(model, {"temperature": 0.0}, max_tokens=20)
    calls = {"n": 0}
    real_eval = model.eval_batch

    def eval_then_interrupt(items, all_logits=False):       # every step goes through eval_batch
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_eval(items, all_logits)

    monkeypatch.setattr(model, "eval_batch", eval_then_interrupt)
    shown = []
    runner.turn("Hi", lambda text, r: shown.append(text))
    assert shown[-1] == " [stopped]"
    assert runner.conv.n_fed == runner.session.n_past
    monkeypatch.undo()
    runner.turn("Again", lambda text, r: None)      # the next turn still works
    assert runner.conv.n_fed == runner.session.n_past


def test_chat_runs_the_zaya_fixture(zaya_path):
    res = vkinfer("chat", zaya_path, "-n", "4", "-q", "--kv-type", "f16", stdin="Hello!\n")
    assert res.returncode == 0, res.stderr
    assert "(zaya)" in res.stderr and "Traceback" not in res.stderr


def test_session_save_load_round_trip(tmp_path, zaya_path):
    """A saved session continues exactly like the original; position-indexed state (the KV
    cache) is saved only up to n_past."""
    model = load(zaya_path, n_ctx=256, n_seq=2)
    ids = np.load(FIX / "zaya-small-q4_k_m.ref.npz")["prompt_ids"].tolist()
    s = model.session()
    s.eval(ids[:10])
    s.save(tmp_path / "s.npz", note="kept")
    assert np.load(tmp_path / "s.npz")["state_k.0"].shape[0] == 10
    want = s.eval(ids[10:])
    other = model.session()
    extra = other.load(tmp_path / "s.npz")
    assert str(extra["note"]) == "kept" and other.n_past == 10
    np.testing.assert_array_equal(other.eval(ids[10:]), want)
    from vkinfer.errors import VkInferError
    mamba = load(MODEL)
    with pytest.raises(VkInferError, match="saved with a zaya model"):
        mamba.session().load(tmp_path / "s.npz")
    model.close()
    mamba.close()


def test_chat_message_past_the_context_keeps_the_conversation(model):
    small = load(MODEL, n_ctx=24)
    runner = ChatRunner(small, {"temperature": 0.0}, max_tokens=3)
    runner.turn("Hi", lambda text, r: None)
    state, n_past = runner.conv.state(), runner.session.n_past
    from vkinfer.errors import VkInferError
    with pytest.raises(VkInferError, match="left of 24"):
        runner.turn("a long message " * 5, lambda text, r: None)
    assert runner.conv.state() == state and runner.session.n_past == n_past
    small.close()


def test_run_until_the_context_is_full_and_bad_counts():
    res = vkinfer("run", MODEL, "-p", "Hello there", "-n", -1, "-c", 12, "--ignore-eos", "-q")
    assert res.returncode == 0, res.stderr
    assert "stopped at the end of the context (12 tokens" in res.stderr
    assert "generation: 11 tokens" in res.stderr and "load: " in res.stderr and "warm-up" in res.stderr
    res = vkinfer("run", MODEL, "-p", "Hello", "-n", -3, "-q")
    assert res.returncode == 1 and "-n must be at least 1" in res.stderr and "Traceback" not in res.stderr


def test_llama_cpp_flags(tmp_path):
    """-m, -f, -e, --no-display-prompt, -r/--stop, -s, -ngl (a note), --version: the text is the
    library's greedy continuation of the same prompt."""
    prompt = "Once upon\na time"
    (tmp_path / "p.txt").write_text(prompt)
    with load(MODEL, n_ctx=128) as m:
        want = "".join(m.generate(m.tokenizer.encode(prompt), max_tokens=8))
    res = vkinfer("run", "-m", MODEL, "-f", tmp_path / "p.txt", "-n", 8, "--temp", 0, "-q",
                  "--no-display-prompt", "-s", 1, "-ngl", 99)
    assert res.returncode == 0, res.stderr
    assert res.stdout == want + "\n" and "-ngl ignored" in res.stderr
    res = vkinfer("run", MODEL, "-p", "Once upon\\na time", "-e", "-n", 8, "-q", "--no-display-prompt")
    assert res.stdout == want + "\n"
    stop = want[3:5]
    res = vkinfer("run", MODEL, "-p", prompt, "-n", 8, "-q", "--no-display-prompt", "-r", stop)
    assert res.stdout == want[:want.find(stop)] + "\n"
    res = vkinfer("--version")
    assert res.returncode == 0 and res.stdout.startswith("vkinfer ")
    res = vkinfer("run", MODEL, "-p", "x", "-f", tmp_path / "p.txt")
    assert res.returncode == 1 and "-p or -f, not both" in res.stderr


def test_nan_logits_are_one_line(tmp_path):
    """Weights that make NaN logits end `run` with one line, not a ValueError traceback."""
    from gguf_edit import rewrite_gguf
    bad = tmp_path / "nan.gguf"
    w = np.full(64, np.nan, np.float32)
    rewrite_gguf(MODEL, bad, tensors={"output_norm.weight": (w, "F32")})
    res = vkinfer("run", bad, "-p", "Hello", "-n", 4, "-q")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "NaN or infinite logits" in res.stderr.strip().splitlines()[-1]
