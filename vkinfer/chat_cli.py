"""`vkinfer chat`: a terminal conversation with one model session.

Each turn feeds the model only the tokens the template adds (the state is kept between turns);
snapshots after each prompt let the conversation go back when a template rewrites an earlier
turn. Nothing a person types loses the conversation: a message that does not fit, a Ctrl-C while
a message is read in, a /load of a bad file each leave the conversation and the model state as
they were, with one line saying why. Ctrl-C stops an answer and keeps the program; Ctrl-D exits."""
import json
import math
import sys
import time

from .chat import Conversation, ReasoningFilter, stop_ids
from .errors import VkInferError
from .engine import Generation
from .sampling import Sampler

HELP = """commands:
  /reset             start a new conversation
  /save FILE         save the conversation and the model state to FILE
  /load FILE         load them back
  /set NAME VALUE    change a sampling setting: temp, top_k, top_p, min_p, repeat_penalty, seed
                     (/set alone shows them)
  /stats             the last turn's prompt and answer speed, and the context used
  /help              this text
  /quit, /exit       leave (so does Ctrl-D)
A line ending in \\ goes on on the next line; a message between two \"\"\" may span lines.
Start a message with // to send text that begins with /.
Ctrl-C stops an answer, or drops a message while it is read in; Ctrl-D leaves."""
DIM, RESET = "\x1b[2m", "\x1b[0m"
KEEP_SNAPSHOTS = 4      # besides the empty conversation's: where a rewritten template can go back
# /set names -> (Sampler argument, type)
SETTINGS = {"temp": ("temperature", float), "temperature": ("temperature", float),
            "top_k": ("top_k", int), "top_p": ("top_p", float), "min_p": ("min_p", float),
            "repeat_penalty": ("repeat_penalty", float), "seed": ("seed", int)}


class ChatRunner:
    """The conversation logic without the terminal: `turn(text, emit)` feeds the user's text,
    streams the answer through emit(text, is_reasoning) and returns the answer's text."""

    def __init__(self, model, sampling: dict, max_tokens: int = 256, system: str | None = None,
                 reasoning: str = "show", template: str | None = None, stop=()):
        self.model, self.max_tokens, self.reasoning = model, max_tokens, reasoning
        self.extra_stops = list(stop)
        tok = model.tokenizer
        self.template = template or model.file.get("tokenizer.chat_template")
        piece = (lambda i: tok.decode([i]) if i is not None else "")
        self.conv = Conversation(tok, self.template, piece(tok.bos_id), piece(tok.eos_id), system=system)
        self.n_valid = min(tok.n_tokens, model.n_vocab)
        self.sampling = dict(sampling)
        self.sampler = Sampler(n_valid=self.n_valid, **self.sampling)
        self.stops = set(stop_ids(tok)) | set(getattr(tok, "eog_ids", ()))
        self.session = model.session()
        self.snapshots = {0: self.session.snapshot()}
        self.last_stats = None      # {"prompt": (tokens, seconds), "answer": (tokens, seconds)}

    def reset(self):
        self.conv.reset()
        self.session.restore(self.snapshots[0])
        self.snapshots = {0: self.snapshots[0]}

    def close(self):
        """Give the model's sequence slot back."""
        self.session.close()

    def _feed_prompt(self, text: str):
        """Feed the new message; (logits, tokens fed). Whatever goes wrong on the way (the
        message does not fit, Ctrl-C, an error) leaves the conversation and the model state as
        they were before, then raises."""
        before = self.conv.state()
        session_before = self.session.snapshot()
        try:
            ids = self.conv.add_user(text)
            checkpoint = None
            if ids is None:      # the template rewrote an earlier turn: go back to a checkpoint
                checkpoint = max(k for k in self.conv.checkpoints() if k in self.snapshots)
                ids = self.conv.rewind(checkpoint)
            start = self.session.n_past if checkpoint is None else self.snapshots[checkpoint]["n_past"]
            room = self.model.n_ctx - start
            if len(ids) + 1 > room:
                raise VkInferError(f"this message needs {len(ids)} tokens but the context has {room} "
                                   f"left of {self.model.n_ctx}; /reset, or restart with a larger -c")
            if checkpoint is not None:
                self.session.restore(self.snapshots[checkpoint])
            logits = self.session.eval(ids)
            after = self.session.snapshot()
        except BaseException:
            self.conv.load_state(before)
            self.session.restore(session_before)
            raise
        self.snapshots[self.conv.n_fed] = after
        for old in sorted(self.snapshots)[1:-KEEP_SNAPSHOTS]:     # bound the memory they take
            del self.snapshots[old]
        return logits, len(ids)

    def turn(self, text: str, emit) -> str:
        """Feed the user's text, stream the answer through emit(text, is_reasoning). A
        KeyboardInterrupt before the answer starts rolls the message back and is raised again;
        one during the answer ends it (" [stopped]") and keeps what was said."""
        t0 = time.perf_counter()
        logits, n_prompt = self._feed_prompt(text)
        t1 = time.perf_counter()
        filt = ReasoningFilter(self.reasoning, in_reasoning=self.conv.prompt_opens_reasoning)
        start, answer, shown = self.session.n_past, "", 0
        gen = Generation(self.model, self.session, list(self.conv.fed_ids), max_tokens=self.max_tokens,
                         stop=list(self.conv.stop_strings or ()) + self.extra_stops, stop_ids=self.stops,
                         sampler=self.sampler, whole=False)

        def show(upto):
            nonlocal shown
            for segment, is_reasoning in filt.push(answer[shown:upto]):
                emit(segment, is_reasoning)
            shown = max(shown, upto)

        failure = None
        try:
            for _, _, text, finish in self.model.decode_generations([gen], logits[None]):
                answer += text
                show(len(answer))
                if finish == "length" and len(gen.generated) < self.max_tokens:
                    emit("\n[context full: /reset to start again]", False)
        except KeyboardInterrupt:
            emit(" [stopped]", False)
        except (VkInferError, ValueError) as e:     # e.g. NaN logits: keep what was said
            failure = e
        show(len(answer))
        for segment, is_reasoning in filt.flush():
            emit(segment, is_reasoning)
        # Only what the session consumed counts as fed (the last token sampled is not, nor one
        # a Ctrl-C caught between sample and eval).
        n_answer = self.session.n_past - start
        self.conv.add_assistant(answer, gen.generated[:n_answer])
        self.last_stats = {"prompt": (n_prompt, t1 - t0), "answer": (n_answer, time.perf_counter() - t1)}
        if failure is not None:
            raise VkInferError(f"the answer stopped: {failure}") from None
        return answer

    # ---- settings and state ------------------------------------------------------------------
    def set(self, name: str, value: str) -> str:
        """/set NAME VALUE: a sampling setting, checked; returns what it is now."""
        key = name.lower().replace("-", "_")
        if key not in SETTINGS:
            raise VkInferError(f"/set: no setting '{name}' (settings: {', '.join(SETTINGS)})")
        arg, kind = SETTINGS[key]
        if arg == "seed" and value.lower() in ("none", "random"):
            parsed = None
        else:
            try:
                parsed = kind(value)
            except ValueError:
                raise VkInferError(f"/set {name}: '{value}' is not {'an integer' if kind is int else 'a number'}") \
                    from None
            if kind is float and not math.isfinite(parsed):
                raise VkInferError(f"/set {name}: '{value}' is not a finite number")
        settings = {**self.sampling, arg: parsed}
        try:
            sampler = Sampler(n_valid=self.n_valid, **settings)
        except ValueError as e:
            raise VkInferError(str(e)) from None
        if arg != "seed":
            sampler.rng = self.sampler.rng       # the random sequence goes on
        self.sampler, self.sampling = sampler, settings
        return f"{arg} = {parsed}"

    def settings(self) -> str:
        s = Sampler(**self.sampling)
        return (f"temp {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, min_p {s.min_p}, "
                f"repeat_penalty {s.repeat_penalty}, seed {self.sampling.get('seed')}")

    def stats(self) -> str:
        used = f"context: {self.session.n_past} of {self.model.n_ctx} tokens used"
        if self.last_stats is None:
            return f"no turn yet; {used}"
        parts = []
        for what, (n, seconds) in self.last_stats.items():
            parts.append(f"{what} {n} tokens in {seconds:.2f} s ({n / max(seconds, 1e-9):.1f} tokens/s)")
        return f"last turn: {', '.join(parts)}; {used}"

    def save(self, path):
        self.session.save(path, conversation=json.dumps(self.conv.state()))

    def load(self, path):
        """Load a saved chat; a file that is not one (truncated, bad JSON, missing fields, from
        another model) is one VkInferError and leaves the chat as it was."""
        before = self.session.snapshot()
        try:
            extra = self.session.load(path)
            if "conversation" not in extra:
                raise VkInferError(f"{path}: a saved session without a conversation")
            try:
                state = json.loads(str(extra["conversation"]))
            except ValueError as e:
                raise VkInferError(f"{path}: the saved conversation is not valid JSON ({e})") from None
            conv = Conversation(self.conv.tok, self.template)
            try:
                conv.load_state(state)
            except VkInferError as e:
                raise VkInferError(f"{path}: {e}") from None
            if conv.n_fed != self.session.n_past:
                raise VkInferError(f"{path}: the conversation holds {conv.n_fed} tokens but the saved "
                                   f"model state {self.session.n_past}")
        except BaseException as e:
            self.session.restore(before)
            if isinstance(e, (VkInferError, KeyboardInterrupt)):
                raise
            raise VkInferError(f"{path}: not a saved vkinfer chat ({type(e).__name__}: {e})") from None
        self.conv.load_state(state)
        self.snapshots = {0: self.snapshots[0], self.conv.n_fed: self.session.snapshot()}


# ---- the terminal ---------------------------------------------------------------------------------
def _prepare_stdin():
    """Line editing and history on a terminal; bytes that are not UTF-8 never stop the input
    (they arrive as surrogate escapes and _read_line turns them into U+FFFD)."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - input() edits lines and keeps history once it is loaded
        except ImportError:
            pass
    try:
        sys.stdin.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError):      # not a text file (tests), or already reading
        pass


def _read_line(prompt: str) -> str:
    line = input(prompt)
    if any("\ud800" <= c <= "\udfff" for c in line):
        try:
            raw = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = line.encode("utf-8", "surrogatepass")
        line = raw.decode("utf-8", "replace")
        print("(that line is not valid UTF-8; its bad bytes read as \ufffd)", file=sys.stderr)
    return line


def read_message(prompt: str = "> ") -> str:
    """One message: a line, lines joined by trailing backslashes, or lines between two \"\"\".
    EOFError when the input ends before a message starts; an unfinished one is sent as it is."""
    line = _read_line(prompt)
    text = line.lstrip()
    if text.startswith('"""'):
        lines = [text[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            try:
                lines.append(_read_line("... "))
            except EOFError:
                break
        else:
            lines[-1] = lines[-1].rstrip()[:-3]
        # quotes on lines of their own open and close; they add no empty line
        if len(lines) > 1 and not lines[-1]:
            lines.pop()
        if not lines[0]:
            lines = lines[1:]
        return "\n".join(lines)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = _read_line("... ")
        except EOFError:
            line = ""
            break
    return "\n".join(lines + [line])


def chat_loop(model, args, sampling: dict) -> int:
    try:
        from .cli import read_template
        runner = ChatRunner(model, sampling, args.n_predict, args.system, args.reasoning,
                            read_template(getattr(args, "chat_template_file", None)),
                            getattr(args, "stop", ()))
    except ValueError as e:
        raise VkInferError(str(e)) from None
    tty = sys.stdout.isatty()
    _prepare_stdin()

    def emit(text, is_reasoning):
        sys.stdout.write(f"{DIM}{text}{RESET}" if is_reasoning and tty else text)
        sys.stdout.flush()

    template = "its chat template" if runner.template else "a plain User:/Assistant: format (no template)"
    print(f"vkinfer chat: {model.file.path.name} ({model.arch}) on {model.dev.name}, "
          f"{template}. /help for commands, Ctrl-D to quit.", file=sys.stderr)
    try:
        return _talk(runner, emit)
    finally:
        runner.close()


def _talk(runner: ChatRunner, emit) -> int:
    while True:
        try:
            line = read_message()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not line.strip():
            continue
        if line.startswith("/") and not line.startswith("//"):
            if not _command(runner, line.strip()):
                return 0
            continue
        if line.startswith("//"):
            line = line[1:]
        try:
            runner.turn(line, emit)
        except VkInferError as e:
            print(f"\nvkinfer: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(stopped while the message was read in; it was dropped, the conversation is as "
                  "before)", file=sys.stderr)
            continue
        print()


def _command(runner: ChatRunner, line: str) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    say = (lambda text: print(text, file=sys.stderr))
    try:
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            runner.reset()
            say("(new conversation)")
        elif name in ("/save", "/load") and not arg:
            say(f"usage: {name} FILE")
        elif name == "/save":
            runner.save(arg)
            say(f"(saved to {arg})")
        elif name == "/load":
            runner.load(arg)
            say(f"(loaded {arg}: {runner.conv.n_fed} tokens of conversation)")
        elif name == "/set":
            setting, _, value = arg.partition(" ")
            if not value.strip():
                say(f"(sampling: {runner.settings()}; /set NAME VALUE changes one)" if not setting
                    else f"usage: /set {setting} VALUE")
            else:
                say(f"({runner.set(setting, value.strip())})")
        elif name == "/stats":
            say(runner.stats())
        elif name == "/help":
            say(HELP)
        else:
            say(f"unknown command {name}; /help lists the commands (start with // to send text "
                "that begins with /)")
    except (VkInferError, OSError) as e:
        say(f"vkinfer: {e}")
    return True
