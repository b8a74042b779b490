"""Chat templates (the six fixture templates, HF's helpers, the sandbox), the conversation that
feeds only new tokens, reasoning splitting/filtering and stop tokens. Exact comparisons only
(no numeric error bounds apply). A fake tokenizer (one id per character, special strings as
single ids) keeps these tests independent of vkinfer.tokenizer."""
import datetime
import json
from pathlib import Path

import pytest

from vkinfer.chat import (FALLBACK_TEMPLATE, Conversation, ReasoningFilter, render_template,
                          split_reasoning, stop_ids)
from vkinfer.errors import VkInferError

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

SPECIALS = ["<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
            "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
            "<start_of_turn>", "<end_of_turn>", "<|turn>", "<turn|>", "<|channel>", "<channel|>"]


class FakeTokenizer:
    """Ids 0..len(SPECIALS)-1 for the special strings, 1000 + code point for characters."""

    def __init__(self, bos="<bos>", eos="<eos>", add_bos=False, specials=SPECIALS):
        self.specials = list(specials)
        self.bos_id = self.token_to_id(bos)
        self.eos_id = self.token_to_id(eos)
        self.add_bos = add_bos

    def encode(self, text, add_bos=None, special=False):
        ids = [self.bos_id] if (self.add_bos if add_bos is None else add_bos) else []
        i = 0
        while i < len(text):
            hit = next((s for s in self.specials if special and text.startswith(s, i)), None)
            if hit:
                ids.append(self.specials.index(hit))
                i += len(hit)
            else:
                ids.append(1000 + ord(text[i]))
                i += 1
        return ids

    def decode(self, ids):
        return "".join(self.specials[i] if i < 1000 else chr(i - 1000) for i in ids)

    def token_to_id(self, text):
        if text in self.specials:
            return self.specials.index(text)
        return 1000 + ord(text) if len(text) == 1 else None


def template(name):
    return (TEMPLATES / f"{name}.jinja").read_text()


SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "Name a colour."}]

# What each fixture template renders for system + TURNS with a generation prompt, taken from
# the templates' own text (Gemma 2 refuses a system message: it renders TURNS alone).
EXPECTED = {
    "Qwen-Qwen3-0.6B":
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n",
    "HuggingFaceTB-SmolLM3-3B":
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /think\n\n## Custom Instructions\n\nBe brief.\n\n<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    "google-gemma-2-2b-it":
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n",
    "google-gemma-4-31B-it":
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello!<turn|>\n"
        "<|turn>user\nName a colour.<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
    "meta-llama-Llama-3.1-8B-Instruct":
        "<bos><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistralai-Mistral-Nemo-Instruct-2407":
        "<bos>[INST]Hi[/INST]Hello!<eos>[INST]Be brief.\n\nName a colour.[/INST]",
}


def test_all_fixture_templates_are_tested():
    assert sorted(p.stem for p in TEMPLATES.glob("*.jinja")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_template_renders(name):
    messages = [SYSTEM] + TURNS
    if name == "google-gemma-2-2b-it":
        with pytest.raises(VkInferError, match="chat template: System role not supported"):
            render_template(template(name), messages, True, "<bos>", "<eos>")
        messages = TURNS
    assert render_template(template(name), messages, True, "<bos>", "<eos>") == EXPECTED[name]


def test_template_messages_and_variables():
    # Gemma 2's own alternation check
    with pytest.raises(VkInferError, match="roles must alternate"):
        render_template(template("google-gemma-2-2b-it"), [TURNS[0], TURNS[0]])
    # Qwen3 with enable_thinking=False closes an empty reasoning block in the prompt
    out = render_template(template("Qwen-Qwen3-0.6B"), TURNS, enable_thinking=False)
    assert out.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # no generation prompt
    # and renders the last reply (after the last user turn) with an empty reasoning block
    out = render_template(template("Qwen-Qwen3-0.6B"), TURNS[:2], add_generation_prompt=False)
    assert out.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")
    # Llama 3.1's tools go through tojson(indent=4)
    tool = {"name": "météo", "parameters": {"city": "string"}}
    out = render_template(template("meta-llama-Llama-3.1-8B-Instruct"), TURNS, tools=[tool])
    assert '{\n    "name": "météo",\n    "parameters": {\n        "city": "string"\n    }\n}' in out


def test_jinja_helpers():
    assert render_template("{{ strftime_now('%Y') }}", []) == str(datetime.date.today().year)
    assert render_template("{{ x | tojson }}", [], x={"k": "é", "n": [1, 2]}) == '{"k": "é", "n": [1, 2]}'
    assert render_template("{{ x | tojson(indent=2) }}", [], x=[1]) == "[\n  1\n]"
    assert render_template("{{ bos_token }}|{{ eos_token }}", [], bos_token="<s>", eos_token="</s>") == "<s>|</s>"
    loop = "{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}" \
           "{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"
    assert render_template(loop, []) == "13"
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indent before one
    assert render_template("{% if true %}\nA\n    {% endif %}\nB", []) == "A\nB"
    with pytest.raises(VkInferError, match="chat template: stop here"):
        render_template("{{ raise_exception('stop here') }}", [])


def test_sandbox_and_errors():
    with pytest.raises(VkInferError, match="chat template failed"):
        render_template("{% set _ = messages.append(1) %}", [])          # immutable
    with pytest.raises(VkInferError, match="chat template failed"):
        render_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    with pytest.raises(VkInferError, match="does not compile"):
        render_template("{% if %}", [])
    with pytest.raises(VkInferError, match="chat template failed"):
        render_template("{{ messages[0]['role'] }}", [])                  # undefined


def test_fallback_template():
    out = render_template(FALLBACK_TEMPLATE, [SYSTEM] + TURNS)
    assert out == "Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Name a colour.\nAssistant:"
    assert render_template(FALLBACK_TEMPLATE, TURNS[:1], False) == "User: Hi\n"
    with pytest.raises(VkInferError, match="no role tool"):
        render_template(FALLBACK_TEMPLATE, [{"role": "tool", "content": "x"}])


def _chat_turn(conv, tok, user, reply):
    """Add a user turn, check the returned ids, 'generate' `reply`, record it."""
    ids = conv.add_user(user)
    assert ids is not None
    reply_ids = tok.encode(reply, add_bos=False, special=True)
    conv.add_assistant(reply, reply_ids)
    return ids


def test_conversation_feeds_only_new_tokens():
    tok = FakeTokenizer()
    conv = Conversation(tok, template("Qwen-Qwen3-0.6B"), system="Be brief.")
    first = conv.add_user("Hi")
    assert tok.decode(first) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi" \
                                "<|im_end|>\n<|im_start|>assistant\n"
    conv.add_assistant("Hello!", tok.encode("Hello!"))
    second = conv.add_user("Name a colour.")
    assert tok.decode(second) == "<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n" \
                                 "<|im_start|>assistant\n"
    assert conv.fed_ids == tok.encode(EXPECTED["Qwen-Qwen3-0.6B"], special=True)
    assert conv.n_fed == len(first) + len("Hello!") + len(second)
    assert not conv.diverged


def test_conversation_reply_ids_count_as_fed():
    # The model may spell its reply with other tokens than the tokenizer would: what counts
    # is their text, so the next turn still feeds only its own tokens.
    tok = FakeTokenizer(specials=SPECIALS + ["lo!"])
    conv = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    first = conv.add_user("Hi")
    reply_ids = [tok.token_to_id(c) for c in "Hel"] + [tok.token_to_id("lo!")]
    conv.add_assistant("Hello!", reply_ids)
    assert tok.decode(conv.add_user("Bye")) == "<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n" \
                                               "<|im_start|>assistant\n"
    assert conv.fed_ids[len(first):len(first) + len(reply_ids)] == reply_ids


@pytest.mark.parametrize("template_bos,add_bos,want_bos", [(True, True, 1), (True, False, 1),
                                                           (False, True, 1), (False, False, 0)])
def test_conversation_bos_once(template_bos, add_bos, want_bos):
    tok = FakeTokenizer(add_bos=add_bos)
    text = template("meta-llama-Llama-3.1-8B-Instruct") if template_bos else None
    conv = Conversation(tok, text, "<bos>", "<eos>")
    ids = conv.add_user("Hi")
    assert ids.count(tok.bos_id) == want_bos and (ids[0] == tok.bos_id) == bool(want_bos)
    reply = "Hello." if template_bos else " Hello."     # Llama's template trims replies
    conv.add_assistant(reply, tok.encode(reply, add_bos=False))
    assert tok.bos_id not in conv.add_user("Bye")


def test_conversation_fallback_continues_model_text():
    tok = FakeTokenizer()
    conv = Conversation(tok, None, system="You are terse.")
    assert conv.stop_strings == ("\nUser:",)
    assert tok.decode(conv.add_user("Hi")) == "You are terse.\nUser: Hi\nAssistant:"
    conv.add_assistant(" Hello.", tok.encode(" Hello.\n"))     # the newline before "User:" was fed
    assert tok.decode(conv.add_user("Bye")) == "User: Bye\nAssistant:"


def test_conversation_qwen3_reasoning_diverges_then_rewinds():
    # Qwen3 renders an earlier turn without its reasoning: the model holds the reasoning, so
    # the new prompt does not extend what was fed. The caller goes back to the checkpoint
    # after the first prompt (a snapshot it took there) and feeds from it.
    tok = FakeTokenizer()
    conv = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    first = conv.add_user("2+2?")
    reply = "<think>\nEasy.\n</think>\n\n4"
    conv.add_assistant(reply, tok.encode(reply, special=True))
    assert conv.add_user("3+3?") is None and conv.diverged
    assert conv.messages[1]["content"] == reply                 # the history keeps all of it
    assert conv.checkpoints() == [0, len(first)]
    with pytest.raises(VkInferError, match="rewind"):
        conv.add_assistant("x", [])
    with pytest.raises(VkInferError, match="cannot resume after 3 tokens"):
        conv.rewind(3)
    ids = conv.rewind(len(first))
    assert tok.decode(ids) == "4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n"
    assert not conv.diverged
    assert conv.fed_ids == tok.encode(conv.render(), special=True)
    # the rewound conversation goes on normally
    conv.add_assistant("6", tok.encode("6"))
    assert tok.decode(conv.add_user("Thanks")).startswith("<|im_end|>\n<|im_start|>user\nThanks")


def test_conversation_mistral_system_moves_every_turn():
    tok = FakeTokenizer(bos="<bos>", eos="<eos>")
    conv = Conversation(tok, template("mistralai-Mistral-Nemo-Instruct-2407"), "<bos>", "<eos>",
                        system="Be brief.")
    conv.add_user("Hi")
    conv.add_assistant("Hello!", tok.encode("Hello!"))
    assert conv.add_user("Name a colour.") is None
    assert conv.checkpoints() == [0]
    assert tok.decode(conv.rewind(0)) == EXPECTED["mistralai-Mistral-Nemo-Instruct-2407"]


# A ChatML template whose generation prompt opens the reasoning block and whose earlier turns
# show it again, like ZAYA1's (spec zaya1.md §5).
OPENS_REASONING = (
    "{{ bos_token }}<|im_start|>system\n{% if messages[0].role == 'system' %}"
    "{{ messages[0].content }}{% endif %}<|im_end|>\n"
    "{% for m in messages if m.role != 'system' %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and '</think>' in m.content %}"
    "<think>\n{{ m.content.split('</think>')[0].split('<think>')[-1].strip() }}\n</think>\n\n"
    "{{ m.content.split('</think>')[-1].lstrip() }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")


def test_conversation_prompt_opens_reasoning():
    tok = FakeTokenizer(add_bos=True)
    conv = Conversation(tok, OPENS_REASONING, "<bos>", "<eos>")
    first = conv.add_user("Hi")
    assert first.count(tok.bos_id) == 1
    assert conv.prompt_opens_reasoning
    generated = "Greet back.\n</think>\n\nHello!"
    conv.add_assistant(generated, tok.encode(generated, add_bos=False, special=True))
    assert conv.messages[-1]["content"] == "<think>\n" + generated
    assert split_reasoning(conv.messages[-1]["content"]) == ("Greet back.", "Hello!")
    assert not conv.prompt_opens_reasoning
    ids = conv.add_user("Bye")
    assert tok.decode(ids) == "<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert split_reasoning(generated) == ("Greet back.", "Hello!")


def test_conversation_template_error_keeps_state():
    tok = FakeTokenizer()
    conv = Conversation(tok, template("google-gemma-2-2b-it"), "<bos>", system="Be brief.")
    with pytest.raises(VkInferError, match="System role not supported"):
        conv.add_user("Hi")
    assert conv.messages == [SYSTEM] and conv.fed_ids == []


def test_conversation_state_round_trip():
    tok = FakeTokenizer()
    conv = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    _chat_turn(conv, tok, "Hi", "Hello!")
    saved = conv.state()
    again = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    again.load_state(saved)
    assert again.add_user("Bye") == conv.add_user("Bye")
    conv.reset()
    assert conv.messages == [] and conv.n_fed == 0


def test_stop_ids():
    assert stop_ids(FakeTokenizer()) == [1, 3, 11, 7, 13]   # <eos>, <|im_end|>, <end_of_turn>, ...
    tok = FakeTokenizer(eos="<|im_end|>", specials=["<|im_end|>", "<turn|>"])
    assert stop_ids(tok) == [0, 1]
    tok = FakeTokenizer(specials=[])
    tok.eos_id = None
    assert stop_ids(tok) == []


@pytest.mark.parametrize("text,want", [
    ("<think>\nHmm.\n</think>\n\nYes.", ("Hmm.", "Yes.")),
    ("Hmm.\n</think>\n\nYes.", ("Hmm.", "Yes.")),          # opened by the generation prompt
    ("<think>\nStill thinking", ("Still thinking", "")),   # cut off
    ("Just an answer.", ("", "Just an answer.")),
    ("<|channel>thought\nHmm.<channel|>Yes.", ("thought\nHmm.", "Yes.")),
])
def test_split_reasoning(text, want):
    assert split_reasoning(text) == want


def _filter_all(text, mode, size, in_reasoning=False):
    f = ReasoningFilter(mode, in_reasoning=in_reasoning)
    segments = []
    for i in range(0, len(text), size):
        segments += f.push(text[i:i + size])
    segments += f.flush()
    merged = []
    for s, r in segments:
        assert s, "empty segment"
        if merged and merged[-1][1] == r:
            merged[-1] = (merged[-1][0] + s, r)
        else:
            merged.append((s, r))
    return merged


REPLY = "<think>\nLet me see: a < b.\n</think>\n\nThe answer is <b>4</b>."


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_reasoning_filter_any_chunking(size):
    assert _filter_all(REPLY, "show", size) == [("\nLet me see: a < b.\n", True),
                                                ("\n\nThe answer is <b>4</b>.", False)]
    assert _filter_all(REPLY, "hide", size) == [("The answer is <b>4</b>.", False)]
    opened = REPLY[len("<think>"):]
    assert _filter_all(opened, "hide", size, in_reasoning=True) == [("The answer is <b>4</b>.", False)]
    assert _filter_all("No tags < here <", "hide", size) == [("No tags < here <", False)]
    gemma = "<|channel>thought\nHmm<channel|>Yes."
    assert _filter_all(gemma, "show", size) == [("thought\nHmm", True), ("Yes.", False)]


def test_reasoning_filter_holds_back_partial_tags():
    f = ReasoningFilter("show")
    assert f.push("Hi <th") == [("Hi ", False)]
    assert f.push("ink>deep") == [("deep", True)]
    assert f.push("</thi") == []
    assert f.push("nk>ok") == [("ok", False)]
    assert f.push("<") == []
    assert f.flush() == [("<", False)]
    with pytest.raises(ValueError, match="reasoning mode"):
        ReasoningFilter("dim")


def test_conversation_state_is_a_copy():
    # A rollback restores a state taken before the turn; later turns must not change it.
    tok = FakeTokenizer()
    conv = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    _chat_turn(conv, tok, "Hi", "Hello!")
    saved = conv.state()
    frozen = json.dumps(saved)
    _chat_turn(conv, tok, "More", "Sure.")
    conv.add_user("And more")
    assert json.dumps(saved) == frozen
    conv.load_state(saved)
    assert json.dumps(conv.state()) == frozen
    again = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    _chat_turn(again, tok, "Hi", "Hello!")
    assert conv.add_user("Bye") == again.add_user("Bye")


@pytest.mark.parametrize("change,message", [
    (lambda s: [], "a JSON list, not an object"),
    (lambda s: {k: v for k, v in s.items() if k != "marks"}, "no marks"),
    (lambda s: {**s, "messages": [{"role": "user"}]}, "messages must be"),
    (lambda s: {**s, "messages": "Hi"}, "messages must be"),
    (lambda s: {**s, "fed_ids": [1, "2"]}, "fed_ids must be"),
    (lambda s: {**s, "fed_ids": [1.5]}, "fed_ids must be"),
    (lambda s: {**s, "fed_text": None}, "fed_text must be"),
    (lambda s: {**s, "marks": [[0, 0], [5]]}, "marks must be a list"),
    (lambda s: {**s, "marks": [[0, 0], [10 ** 6, 1]]}, "marks must start at"),
])
def test_conversation_load_state_refuses_bad_states(change, message):
    tok = FakeTokenizer()
    conv = Conversation(tok, template("Qwen-Qwen3-0.6B"))
    _chat_turn(conv, tok, "Hi", "Hello!")
    before = json.dumps(conv.state())
    bad = change(json.loads(before))
    with pytest.raises(VkInferError, match=message):
        conv.load_state(bad)
    assert json.dumps(conv.state()) == before
