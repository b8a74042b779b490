"""`vkinfer chat` never loses the conversation: a message past the context, a Ctrl-C while a
message is read in, a /load of a bad file each leave the conversation and the model state exactly
as they were (compared with copies taken before), and the next message works as if nothing had
happened (compared with a runner that never saw the bad input). The input side: bytes that are
not UTF-8, NUL bytes, multi-line messages, and every command. On the bundled demo model, greedy.
"""
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from vkinfer import chat_cli, load
from vkinfer.chat_cli import HELP, ChatRunner, chat_loop
from vkinfer.errors import VkInferError

DEMO = Path(__file__).parent.parent / "vkinfer" / "data" / "demo-mamba.gguf"
GREEDY = {"temperature": 0.0}
LONG = "word " * 400


@pytest.fixture(scope="module")
def model():
    m = load(DEMO, n_ctx=256, n_seq=2)
    yield m
    m.close()


@pytest.fixture
def runner(model):
    r = ChatRunner(model, GREEDY, max_tokens=6)
    yield r
    r.close()


def copies(r: ChatRunner):
    """The conversation (as JSON text) and the model state (arrays copied), by value."""
    snap = r.session.snapshot()
    return json.dumps(r.conv.state()), snap["n_past"], {k: np.array(v) for k, v in snap["state"].items()}


def assert_unchanged(r: ChatRunner, before):
    conv, n_past, state = copies(r)
    assert conv == before[0] and n_past == before[1]
    assert state.keys() == before[2].keys()
    for k in state:
        np.testing.assert_array_equal(state[k], before[2][k], err_msg=k)


def reference_answers(model, messages):
    """What a fresh runner answers to `messages` (no bad input in between)."""
    r = ChatRunner(model, GREEDY, max_tokens=6)
    try:
        return [r.turn(m, lambda t, x: None) for m in messages], list(r.conv.fed_ids)
    finally:
        r.close()


def quiet(text, is_reasoning):
    pass


def test_message_past_the_context_does_not_jam_the_chat(model, runner):
    first = runner.turn("Hello", quiet)
    before = copies(runner)
    with pytest.raises(VkInferError, match="needs .* tokens but the context has .* left of 256"):
        runner.turn(LONG, quiet)
    assert_unchanged(runner, before)
    second = runner.turn("Hi", quiet)
    assert runner.conv.n_fed == runner.session.n_past
    assert ([first, second], runner.conv.fed_ids) == reference_answers(model, ["Hello", "Hi"])


def test_ctrl_c_while_a_message_is_read_in_rolls_it_back(model, runner, monkeypatch):
    first = runner.turn("Hello", quiet)
    before = copies(runner)
    real_eval = runner.session.eval

    def half_then_ctrl_c(ids, all_logits=False):
        if len(ids) > 1:           # the prompt: some of it goes in, then Ctrl-C
            real_eval(ids[:len(ids) // 2])
            raise KeyboardInterrupt
        return real_eval(ids, all_logits)

    monkeypatch.setattr(runner.session, "eval", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        runner.turn("Tell me a long story about the sea and the sky", quiet)
    monkeypatch.undo()
    assert_unchanged(runner, before)
    second = runner.turn("Hi", quiet)
    assert ([first, second], runner.conv.fed_ids) == reference_answers(model, ["Hello", "Hi"])


def test_ctrl_c_while_reading_in_keeps_the_program(model, monkeypatch, capsys):
    real = chat_cli.ChatRunner

    class Interrupted(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            real_eval, self.calls = self.session.eval, 0

            def eval_(ids, all_logits=False):
                self.calls += 1
                if self.calls == 1:
                    raise KeyboardInterrupt
                return real_eval(ids, all_logits)
            self.session.eval = eval_
            Interrupted.made = self

    monkeypatch.setattr(chat_cli, "ChatRunner", Interrupted)
    try:
        assert run_chat(model, monkeypatch, b"A long message\nHi\n/stats\n") == 0
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while the message was read in ended the chat")
    err = capsys.readouterr().err
    assert "(stopped while the message was read in; it was dropped" in err
    r = Interrupted.made
    assert [m["content"] for m in r.conv.messages if m["role"] == "user"] == ["Hi"]
    assert "last turn: prompt" in err


def test_load_of_a_bad_file_leaves_the_chat_unchanged(model, runner, tmp_path):
    runner.turn("Hello", quiet)
    good = tmp_path / "good.npz"
    runner.save(good)
    runner.turn("Hi", quiet)
    before = copies(runner)
    with np.load(good) as z:
        parts = {k: z[k] for k in z.files}
    data = good.read_bytes()
    bad = {"truncated.npz": data[:len(data) // 2], "empty.npz": b"", "text.npz": b"not a zip\n"}
    for name, raw in bad.items():
        (tmp_path / name).write_bytes(raw)
    for name, conversation in [("json.npz", '{"messages": ['), ("fields.npz", '{"messages": []}'),
                               ("types.npz", json.dumps({**json.loads(str(parts["conversation"])), "fed_ids": "x"})),
                               ("count.npz", '{"messages": [], "fed_ids": [1], "fed_text": "a", "marks": [[0, 0]]}')]:
        np.savez(tmp_path / name, **{**parts, "conversation": conversation})
    no_conv = {k: v for k, v in parts.items() if k != "conversation"}
    np.savez(tmp_path / "noconv.npz", **no_conv)
    (tmp_path / "adir").mkdir()
    messages = {}
    for name in [*bad, "json.npz", "fields.npz", "types.npz", "count.npz", "noconv.npz", "adir", "missing.npz"]:
        with pytest.raises(VkInferError) as e:
            runner.load(tmp_path / name)
        messages[name] = str(e.value)
        assert "\n" not in messages[name] and str(tmp_path / name) in messages[name]
        assert_unchanged(runner, before)
    assert "not valid JSON" in messages["json.npz"] and "no fed_ids, fed_text, marks" in messages["fields.npz"]
    assert "fed_ids must be" in messages["types.npz"] and "holds 1 tokens" in messages["count.npz"]
    runner.load(good)                       # and a good file still loads
    assert runner.conv.state() == json.loads(str(parts["conversation"]))
    assert runner.conv.n_fed == runner.session.n_past


def test_save_name_is_the_path_written(model, tmp_path, monkeypatch, capsys):
    path = tmp_path / "chat"          # no .npz: written and loaded as given
    assert run_chat(model, monkeypatch, f"Hello\n/save {path}\n/reset\n/load {path}\nMore\n".encode()) == 0
    err = capsys.readouterr().err
    assert f"(saved to {path})" in err and f"(loaded {path}: " in err and "vkinfer: " not in err
    assert path.exists() and not Path(str(path) + ".npz").exists()


def run_chat(model, monkeypatch, stdin: bytes, n_predict=4) -> int:
    """chat_loop in this process, reading `stdin` as a pipe would give it."""
    stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")     # strict, as a real pipe
    monkeypatch.setattr(sys, "stdin", stream)
    args = types.SimpleNamespace(n_predict=n_predict, system=None, reasoning="show")
    return chat_loop(model, args, GREEDY)


def test_input_lines_and_commands(model, monkeypatch, capsys):
    seen = []

    class Recording(chat_cli.ChatRunner):
        def turn(self, text, emit):
            seen.append(text)
            return super().turn(text, emit)

    monkeypatch.setattr(chat_cli, "ChatRunner", Recording)
    script = (b'hello\n\xff\xfe abc\na\x00b\n"""\nline one\nline two\n"""\n"""one line"""\n'
              b'end with \\\nnext\n//not a command\n/foo\n/set temp 0.7\n/set top_k 5\n/set top_p 0.9\n'
              b'/set min_p 0.1\n/set repeat_penalty 1.2\n/set seed 3\n/set temp nan\n/set top_k 1.5\n'
              b'/set top_p 2\n/set colour 1\n/set\n/stats\n/help\n"""\nunfinished')
    assert run_chat(model, monkeypatch, script) == 0
    err = capsys.readouterr().err
    assert seen == ["hello", "\ufffd\ufffd abc", "a\x00b", "line one\nline two", "one line",
                    "end with \nnext", "/not a command", "unfinished"]
    assert "(that line is not valid UTF-8; its bad bytes read as \ufffd)" in err
    assert "unknown command /foo; /help lists the commands" in err
    for ok in ("temperature = 0.7", "top_k = 5", "top_p = 0.9", "min_p = 0.1", "repeat_penalty = 1.2", "seed = 3"):
        assert f"({ok})" in err
    assert "/set temp: 'nan' is not a finite number" in err and "'1.5' is not an integer" in err
    assert "top_p=2" in err and "no setting 'colour'" in err
    assert "(sampling: temp 0.7, top_k 5, top_p 0.9, min_p 0.1, repeat_penalty 1.2, seed 3;" in err
    assert "last turn: prompt " in err and " tokens/s), answer " in err and "context: " in err
    for command in ("/reset", "/save", "/load", "/set", "/stats", "/help", "/quit"):
        assert command in HELP
    assert HELP in err and "Traceback" not in err


def test_the_issue_reproductions_as_commands():
    """The issue's shell lines in one run: a message past the context, then bytes that are not
    UTF-8; every other message is answered, and there is no traceback."""
    res = subprocess.run([sys.executable, "-m", "vkinfer", "chat", "-c", "256", "-n", "4", "--temp", "0", "-q"],
                         input=f"Hello\n{LONG}\nHi\n".encode() + b"hello\n\xff\xfe abc\nhi\n",
                         capture_output=True, timeout=120)
    out, err = res.stdout.decode(), res.stderr.decode()
    assert res.returncode == 0 and "Traceback" not in err, err
    assert err.count("this message needs") == 1 and "not valid UTF-8" in err, err
    answers = [a for a in out.split("> ") if a.strip()]
    assert len(answers) == 5, out                  # all but the long message


def test_line_editing_on_a_terminal(monkeypatch):
    monkeypatch.delitem(sys.modules, "readline", raising=False)
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: True))
    chat_cli._prepare_stdin()
    assert "readline" in sys.modules
