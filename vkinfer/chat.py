"""Chat: templates (jinja2, sandboxed, as Hugging Face renders them), the conversation that feeds
a stateful model only its new tokens, reasoning (`<think>…</think>`) splitting and filtering,
and the stop tokens.

Feeding a conversation
----------------------
A recurrent model (Mamba, ZAYA's conv state) cannot drop tokens it has seen, so each turn must
feed only what the template adds to what the model already holds::

    conv = Conversation(tok, template, bos_token, eos_token, system="Be brief.")
    ids = conv.add_user("Hi")            # the new tokens: feed them, then generate
    if ids is None:                      # the template rewrote an earlier turn (conv.diverged)
        n = max(k for k in conv.checkpoints() if k in snapshots)   # 0 = from scratch
        session.restore(snapshots[n])    # the model state after the first n fed tokens
        ids = conv.rewind(n)             # what to feed from there
    session.eval(ids); snapshots[conv.n_fed] = session.snapshot()
    ...generate; reply_ids = the generated ids that were fed (not the stop token)...
    conv.add_assistant(reply_text, reply_ids)

Prefixes are compared as text: the template renders the whole conversation, and what the model
holds is the text of the tokens fed so far (prompts as rendered, replies as `tok.decode(ids)` of
the ids the model produced). When the new rendering starts with that text, only the rest is
tokenized and returned. Comparing text, not a re-tokenization of the whole conversation, keeps a
reply's own tokens valid even where the tokenizer would split its text differently. When the
rendering does not start with it (Qwen3 drops an earlier turn's reasoning; Mistral moves the
system text to the last user turn), `add_user` returns None and the caller goes back to a
checkpoint: a point between earlier segments whose text the new rendering still starts with.
"""
import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import VkInferError
from .tokenizer import END_OF_TURN_TEXTS

# For base models with no template (Mamba): "User: …\nAssistant: …" lines, system text first.
FALLBACK_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message.role == 'system' -%}{{ message.content | trim }}{{ '\\n' }}\n"
    "{%- elif message.role == 'user' -%}User: {{ message.content | trim }}{{ '\\n' }}\n"
    "{%- elif message.role == 'assistant' -%}Assistant: {{ message.content | trim }}{{ '\\n' }}\n"
    "{%- else -%}{{ raise_exception('the plain User:/Assistant: format has no role ' + message.role) }}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}\n")
# A base model does not stop by itself: the caller ends the reply when it writes this.
FALLBACK_STOP_STRINGS = ("\nUser:",)


# (open, close) pairs: <think> (Qwen3, SmolLM3, ZAYA1) and Gemma 4's thought channel.
REASONING_TAGS = (("<think>", "</think>"), ("<|channel>", "<channel|>"))


def _raise_exception(message):
    raise VkInferError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Hugging Face's version: non-ASCII kept as is, and an indent argument.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise VkInferError(f"chat template does not compile: {e}") from None


def render_template(template: str, messages: list, add_generation_prompt=True, bos_token="",
                    eos_token="", **extra) -> str:
    """Render a chat template as Hugging Face's apply_chat_template does (tools=None unless
    given; `extra` holds template variables such as enable_thinking). A template's own
    raise_exception, or any error in it, is a VkInferError."""
    variables = {"tools": None, "documents": None, **extra}
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos_token, eos_token=eos_token, **variables)
    except VkInferError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise VkInferError(f"chat template failed: {type(e).__name__}: {e}") from None


def stop_ids(tok) -> list:
    """EOS and every known end-of-turn string that is a single token of `tok`."""
    ids = [] if tok.eos_id is None else [tok.eos_id]
    for text in END_OF_TURN_TEXTS:
        i = tok.token_to_id(text)
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def split_reasoning(text: str, tags=REASONING_TAGS) -> tuple:
    """(reasoning, answer) of a reply. The opening tag may be missing (the generation prompt
    opened it); an unclosed block is all reasoning. Without tags: ("", text)."""
    for open_tag, close_tag in tags:
        if close_tag in text:
            before, answer = text.split(close_tag, 1)
            return before.split(open_tag)[-1].strip("\n"), answer.lstrip("\n")
        if open_tag in text:
            before, reasoning = text.split(open_tag, 1)
            return reasoning.strip("\n"), before.strip("\n")
    return "", text


class ReasoningFilter:
    """Streaming split of generated text into answer and reasoning.

    `push(chunk)` returns [(text, is_reasoning), ...] for the text that is certain so far; a
    chunk that ends with the beginning of a tag is held back until the next push (or `flush`).
    The tags themselves are not returned. mode "hide" drops reasoning (and the newlines that
    follow its end); "show" returns it flagged so a UI can dim it. `in_reasoning=True` starts
    inside a block, for generation prompts that open it (Conversation.prompt_opens_reasoning).
    """

    def __init__(self, mode="show", in_reasoning=False, tags=REASONING_TAGS):
        if mode not in ("show", "hide"):
            raise ValueError(f"reasoning mode must be 'show' or 'hide', not {mode!r}")
        self.mode = mode
        self.tags = tags
        self.close_tag = tags[0][1] if in_reasoning else None    # set while inside a block
        self.pending = ""
        self.after_block = False

    def push(self, chunk: str) -> list:
        text, out = self.pending + chunk, []
        while True:
            targets = [self.close_tag] if self.close_tag else [o for o, _ in self.tags]
            hits = [(text.find(t), t) for t in targets if t in text]
            if not hits:
                break
            at, tag = min(hits)
            self._emit(out, text[:at])
            text = text[at + len(tag):]
            if self.close_tag:
                self.close_tag, self.after_block = None, True
            else:
                self.close_tag = dict(self.tags)[tag]
        keep = max((partial_suffix(text, t) for t in targets), default=0)
        self._emit(out, text[:len(text) - keep])
        self.pending = text[len(text) - keep:]
        return out

    def flush(self) -> list:
        out = []
        self._emit(out, self.pending)
        self.pending = ""
        return out

    def _emit(self, out: list, text: str):
        reasoning = self.close_tag is not None
        if reasoning and self.mode == "hide":
            return
        if not reasoning and self.after_block and self.mode == "hide":
            text = text.lstrip("\n")
            if not text:
                return
        if not reasoning:
            self.after_block = False
        if not text:
            return
        if out and out[-1][1] == reasoning:
            out[-1] = (out[-1][0] + text, reasoning)
        else:
            out.append((text, reasoning))


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class Conversation:
    """The messages of a chat and the tokens already fed to the model (see the module notes).

    template None uses FALLBACK_TEMPLATE (whose `stop_strings` the caller must watch for).
    add_bos: prepend BOS when the first rendering does not already start with bos_token
    (None: the tokenizer's own `add_bos`). template_vars: extra template variables, e.g.
    enable_thinking=False.
    """

    def __init__(self, tokenizer, template: str | None, bos_token="", eos_token="", *, system=None,
                 add_bos=None, template_vars=None):
        self.tok = tokenizer
        self.template = template or FALLBACK_TEMPLATE
        self.stop_strings = FALLBACK_STOP_STRINGS if template is None else ()
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.add_bos = getattr(tokenizer, "add_bos", False) if add_bos is None else add_bos
        self.template_vars = dict(template_vars or {})
        self.system = system
        self.reset()

    def reset(self):
        """Forget every turn but the system text; the caller resets the model state."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.fed_ids = []
        self.fed_text = ""
        self.marks = [(0, 0)]        # (tokens fed, characters of fed_text) between segments
        self.rendered = None         # the last rendering, with generation prompt
        self.diverged = False
        self.prompt_opens_reasoning = False
        self._reasoning_prefix = ""

    @property
    def n_fed(self) -> int:
        return len(self.fed_ids)

    def render(self, add_generation_prompt=True) -> str:
        return render_template(self.template, self.messages, add_generation_prompt,
                               self.bos_token, self.eos_token, **self.template_vars)

    def add_user(self, text: str) -> list | None:
        """Append a user turn; return the tokens to feed before generating the reply, or None
        (and set `diverged`) when the rendering no longer extends what the model holds."""
        self.messages.append({"role": "user", "content": text})
        try:
            self.rendered = self.render()
        except VkInferError:
            self.messages.pop()
            raise
        self._note_reasoning_prefix()
        self.diverged = not self.rendered.startswith(self.fed_text)
        return None if self.diverged else self._feed_rest()

    def checkpoints(self) -> list:
        """Token counts, ascending, after which the model could resume the current rendering:
        the boundaries between fed segments whose text the rendering starts with."""
        rendered = self.rendered or ""
        return [n for n, chars in self.marks if rendered.startswith(self.fed_text[:chars])]

    def rewind(self, n_fed: int) -> list:
        """The caller has put the model back to its state after the first `n_fed` tokens (a
        checkpoint); forget the rest and return the tokens to feed from there."""
        if self.rendered is None or n_fed not in self.checkpoints():
            raise VkInferError(f"chat: cannot resume after {n_fed} tokens; the checkpoints "
                               f"are {self.checkpoints()}")
        i = [n for n, _ in self.marks].index(n_fed)
        self.fed_ids = self.fed_ids[:n_fed]
        self.fed_text = self.fed_text[:self.marks[i][1]]
        self.marks = self.marks[:i + 1]
        self.diverged = False
        return self._feed_rest()

    def add_assistant(self, text: str, ids: list):
        """Record the reply: `text` as the model wrote it (reasoning included; the template
        decides what earlier turns show), `ids` the tokens the model produced and was fed.
        When the generation prompt opened a reasoning block, its opening joins the text."""
        if self.diverged:
            raise VkInferError("chat: the conversation diverged; rewind() before adding a reply")
        self.messages.append({"role": "assistant", "content": self._reasoning_prefix + text})
        self.fed_ids += list(ids)
        self.fed_text += self.tok.decode(list(ids))
        self.marks.append((len(self.fed_ids), len(self.fed_text)))
        self._reasoning_prefix = ""
        self.prompt_opens_reasoning = False

    def state(self) -> dict:
        """JSON-able state, to save next to the model's session state: a copy, which later turns
        leave as it is (so it can also roll a failed turn back)."""
        return {"messages": [dict(m) for m in self.messages], "fed_ids": list(self.fed_ids),
                "fed_text": self.fed_text, "marks": [list(m) for m in self.marks]}

    def load_state(self, state: dict):
        """Take a state() back (from a file, maybe). A state with missing or wrong fields is a
        VkInferError and leaves the conversation as it was."""
        messages, fed_ids, fed_text, marks = _checked_state(state)
        self.reset()
        self.messages, self.fed_ids, self.fed_text, self.marks = messages, fed_ids, fed_text, marks

    def _feed_rest(self) -> list:
        rest = self.rendered[len(self.fed_text):]
        add_bos = self.add_bos and not self.fed_ids and not (
            self.bos_token and self.rendered.startswith(self.bos_token))
        ids = self.tok.encode(rest, add_bos=add_bos, special=True) if rest or add_bos else []
        self.fed_ids += ids
        self.fed_text = self.rendered
        if ids:
            self.marks.append((len(self.fed_ids), len(self.fed_text)))
        return ids

    def _note_reasoning_prefix(self):
        tail = self.rendered.rstrip()
        opening = next((o for o, _ in REASONING_TAGS if tail.endswith(o)), None)
        self.prompt_opens_reasoning = opening is not None
        self._reasoning_prefix = self.rendered[len(tail) - len(opening):] if opening else ""


def _checked_state(state) -> tuple:
    """(messages, fed_ids, fed_text, marks) of a Conversation.state(), copied and checked."""
    def fail(problem):
        raise VkInferError(f"not a saved conversation: {problem}")

    if not isinstance(state, dict):
        fail(f"a JSON {type(state).__name__}, not an object")
    missing = [k for k in ("messages", "fed_ids", "fed_text", "marks") if k not in state]
    if missing:
        fail(f"no {', '.join(missing)}")
    messages, fed_ids, fed_text, marks = (state[k] for k in ("messages", "fed_ids", "fed_text", "marks"))
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        fail("messages must be a list of {role, content} strings")
    if not isinstance(fed_ids, list) or not all(type(i) is int and i >= 0 for i in fed_ids):
        fail("fed_ids must be a list of token ids")
    if not isinstance(fed_text, str):
        fail("fed_text must be a string")
    if not isinstance(marks, list) or not all(
            isinstance(m, (list, tuple)) and len(m) == 2 and all(type(x) is int for x in m) for m in marks):
        fail("marks must be a list of [tokens, characters] pairs")
    marks = [tuple(m) for m in marks]
    bounds = [(0, 0), *marks, (len(fed_ids), len(fed_text))]
    if not marks or marks[0] != (0, 0) or any(a[0] > b[0] or a[1] > b[1] for a, b in zip(bounds, bounds[1:])):
        fail("marks must start at [0, 0] and grow within fed_ids and fed_text")
    return [dict(m) for m in messages], list(fed_ids), fed_text, marks
